/* Cortex-M system registers this firmware uses (ARMv7-M Architecture Reference Manual, B3). */
#ifndef CM_H
#define CM_H
#include <stdint.h>
#define REG32(a) (*(volatile uint32_t *)(a))
#define SCB_ICSR   REG32(0xE000ED04u)
#define SCB_AIRCR  REG32(0xE000ED0Cu)
#define SCB_CFSR   REG32(0xE000ED28u)
#define SCB_DEMCR  REG32(0xE000EDFCu)
#define SYST_CSR   REG32(0xE000E010u)
#define SYST_RVR   REG32(0xE000E014u)
#define SYST_CVR   REG32(0xE000E018u)
#define DWT_CTRL   REG32(0xE0001000u)
#define DWT_CYCCNT REG32(0xE0001004u)
#define DWT_LAR    REG32(0xE0001FB0u)
#define NVIC_ISER0 REG32(0xE000E100u)
#define ICSR_PENDSTSET (1u << 26)
#define DEMCR_TRCENA   (1u << 24)
#define DWT_NOCYCCNT   (1u << 25)
static inline void irq_disable(void) { __asm volatile("cpsid i" ::: "memory"); }
static inline void irq_enable(void) { __asm volatile("cpsie i" ::: "memory"); }
static inline void wfi(void) { __asm volatile("wfi" ::: "memory"); }
#endif
