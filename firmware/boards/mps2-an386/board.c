/* Arm MPS2+ with the AN386 FPGA image (Cortex-M4), as QEMU `-M mps2-an386` emulates it:
 * 25 MHz system clock; UART0 = CMSDK APB UART at 0x40004000, RX interrupt IRQ 0, TX IRQ 1
 * (Arm AN386 / AN385 memory map; QEMU hw/arm/mps2.c); reset through SCB AIRCR.SYSRESETREQ. */
#include <stdint.h>
#include "board.h"
#include "cm.h"

const char BOARD_NAME[] = "mps2-an386";
const char CORE_NAME[] = "cortex-m4";
const uint32_t BOARD_CLOCK_HZ = 25000000u;

#define UART0 0x40004000u
#define UART_DATA REG32(UART0 + 0x00u)
#define UART_STATE REG32(UART0 + 0x04u)   /* bit0 TX full, bit1 RX full */
#define UART_CTRL REG32(UART0 + 0x08u)    /* bit0 TX en, bit1 RX en, bit3 RX interrupt en */
#define UART_INTCLR REG32(UART0 + 0x0Cu)  /* write 1: clear bit0 TX, bit1 RX */
#define UART_BAUDDIV REG32(UART0 + 0x10u)
#define UART0_RX_IRQ 0u

#define RING 1024u
static volatile uint8_t ring[RING];
static volatile uint32_t head, tail;

void UART0RX_Handler(void) {
  UART_INTCLR = 2u;   /* clear first: a byte arriving during the drain raises a new interrupt */
  while (UART_STATE & 2u) {
    uint8_t c = (uint8_t)UART_DATA;
    uint32_t h = head, nx = (h + 1u) % RING;
    if (nx != tail) { ring[h] = c; head = nx; }   /* full: drop (the line CRC catches it) */
  }
}

void board_init(void) {
  UART_BAUDDIV = BOARD_CLOCK_HZ / 115200u;
  UART_CTRL = 1u | 2u | 8u;
  NVIC_ISER0 = 1u << UART0_RX_IRQ;
  irq_enable();
}

void board_putc(char c) {
  while (UART_STATE & 1u) {}
  UART_DATA = (uint8_t)c;
}

int board_getc(void) {
  uint32_t t = tail;
  if (t == head) return (UART_STATE & 2u) ? (int)(uint8_t)UART_DATA : -1;  /* also poll: never miss a byte */
  int c = ring[t];
  tail = (t + 1u) % RING;
  return c;
}

void board_idle(void) { wfi(); }

void board_reset(void) {
  __asm volatile("dsb" ::: "memory");
  SCB_AIRCR = (0x05FAu << 16) | (1u << 2);       /* VECTKEY | SYSRESETREQ */
  __asm volatile("dsb" ::: "memory");
  for (;;) {}
}
