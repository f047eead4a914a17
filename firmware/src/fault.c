#include <stdint.h>
#include "fault.h"
#include "board.h"
#include "cm.h"

static volatile int probing, faulted;

void fault_probe_begin(void) { faulted = 0; probing = 1; }
int fault_probe_end(void) { probing = 0; return faulted; }

void hardfault_c(uint32_t *frame) {
  if (probing) {                    /* skip the faulting load/store: 16- or 32-bit Thumb */
    uint16_t insn = *(const uint16_t *)frame[6];
    frame[6] += ((insn & 0xE000u) == 0xE000u && (insn & 0x1800u) != 0) ? 4u : 2u;
    SCB_CFSR = SCB_CFSR;            /* clear the sticky fault status bits */
    faulted = 1;
    return;
  }
  board_reset();
}

__attribute__((naked)) void HardFault_Handler(void) {
  __asm volatile(
      "tst lr, #4\n"
      "ite eq\n"
      "mrseq r0, msp\n"
      "mrsne r0, psp\n"
      "b hardfault_c\n");
}
