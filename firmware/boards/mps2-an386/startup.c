/* Vector table and reset handler for a Cortex-M3/M4/M7: copy .data, zero .bss, run main. */
#include <stdint.h>
#include "board.h"

int main(void);
void HardFault_Handler(void);
void SysTick_Handler(void);
void UART0RX_Handler(void);

void Reset_Handler(void) {
  uint32_t *src = &__etext, *dst = &__data_start;
  while (dst < &__data_end) *dst++ = *src++;
  for (dst = &__bss_start; dst < &__bss_end; dst++) *dst = 0;
  main();
  for (;;) {}
}

static void Default_Handler(void) { board_reset(); }

__attribute__((section(".isr_vector"), used)) void (*const vectors[16 + 32])(void) = {
    (void (*)(void))(&__stack_top),
    Reset_Handler,
    Default_Handler,   /* NMI */
    HardFault_Handler,
    Default_Handler,   /* MemManage */
    Default_Handler,   /* BusFault */
    Default_Handler,   /* UsageFault */
    0, 0, 0, 0,
    Default_Handler,   /* SVCall */
    Default_Handler,   /* DebugMonitor */
    0,
    Default_Handler,   /* PendSV */
    SysTick_Handler,
    [16 + 0] = UART0RX_Handler,
    [16 + 1 ... 16 + 31] = Default_Handler,
};
