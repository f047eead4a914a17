#include "timer.h"
#include "board.h"
#include "cm.h"
#include "fault.h"

#define SYSTICK_RELOAD 0x00FFFFFFu
static int use_dwt;
static uint32_t dwt_hi, dwt_last;
static volatile uint32_t systick_wraps;

void SysTick_Handler(void) { systick_wraps++; }

static int dwt_probe(void) {
  uint32_t ctrl, a, b;
  volatile int spin;
  fault_probe_begin();
  SCB_DEMCR |= DEMCR_TRCENA;
  DWT_LAR = 0xC5ACCE55u;            /* unlock (Cortex-M7); ignored elsewhere */
  ctrl = DWT_CTRL;
  if (!fault_probe_end() && !(ctrl & DWT_NOCYCCNT)) {
    fault_probe_begin();
    DWT_CYCCNT = 0;
    DWT_CTRL = ctrl | 1u;           /* CYCCNTENA */
    a = DWT_CYCCNT;
    for (spin = 0; spin < 100; spin++) {}
    b = DWT_CYCCNT;
    if (!fault_probe_end() && b != a) return 1;
  }
  return 0;
}

void timer_init(void) {
  use_dwt = dwt_probe();
  if (!use_dwt) {
    SYST_RVR = SYSTICK_RELOAD;
    SYST_CVR = 0;
    SYST_CSR = 7u;                  /* ENABLE | TICKINT | CLKSOURCE=processor clock */
  }
}

const char *timer_name(void) { return use_dwt ? "dwt" : "systick"; }

uint64_t timer_now(void) {
  if (use_dwt) {                    /* extend the 32-bit counter; called at least once per wrap */
    uint32_t v = DWT_CYCCNT;
    if (v < dwt_last) dwt_hi++;
    dwt_last = v;
    return ((uint64_t)dwt_hi << 32) | v;
  }
  uint32_t w, v;
  irq_disable();
  w = systick_wraps;
  v = SYST_CVR;
  if (SCB_ICSR & ICSR_PENDSTSET) {  /* wrapped, interrupt not taken yet */
    v = SYST_CVR;
    w++;
  }
  irq_enable();
  return (uint64_t)w * (SYSTICK_RELOAD + 1u) + (SYSTICK_RELOAD - v);
}
