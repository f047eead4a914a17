/* Cycle timer: the DWT cycle counter (CYCCNT) where the core has one, else SysTick on the core
 * clock with a wrap counter. timer_init() probes DWT safely (a bus fault on a core without it
 * is caught, see fault.c) and checks that CYCCNT really advances. */
#ifndef TIMER_H
#define TIMER_H
#include <stdint.h>
void timer_init(void);
const char *timer_name(void);      /* "dwt" or "systick" */
uint64_t timer_now(void);          /* core clock cycles since timer_init (monotonic) */
#endif
