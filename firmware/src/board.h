/* What a board port provides to the portable firmware (src/). One directory per board under
 * boards/<name>/: board.c (clock, UART, idle, reset), startup.c (vector table, reset handler),
 * linker.ld (memory map). See docs/mcu-firmware.md "Porting to a real board". */
#ifndef BOARD_H
#define BOARD_H
#include <stdint.h>

extern const char BOARD_NAME[];   /* e.g. "mps2-an386" */
extern const char CORE_NAME[];    /* e.g. "cortex-m4" */
extern const uint32_t BOARD_CLOCK_HZ;  /* core clock the DWT / SysTick count at */

void board_init(void);            /* clocks, UART (115200 8N1), interrupts */
void board_putc(char c);          /* blocking transmit of one byte */
int board_getc(void);             /* next received byte, or -1 when none is waiting */
void board_idle(void);            /* sleep until an interrupt (a byte arrives) */
void board_reset(void);           /* system reset (never returns) */

/* Linker-script symbols: memory regions and what the image uses of them. */
extern uint32_t __flash_start, __flash_end, __ram_start, __ram_end;
extern uint32_t __etext, __data_start, __data_end, __bss_start, __bss_end;
extern uint32_t __arena_start, __arena_end, __stack_bottom, __stack_top;
#endif
