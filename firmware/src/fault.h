/* HardFault handling: while a probe is open, a faulting access is skipped and recorded (used to
 * detect optional hardware such as the DWT); otherwise the board resets, and the host sees an
 * unsolicited HELLO (a reset mid-run) and resumes. */
#ifndef FAULT_H
#define FAULT_H
void fault_probe_begin(void);
int fault_probe_end(void);          /* 1 when an access faulted since fault_probe_begin() */
#endif
