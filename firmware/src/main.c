/* bitalloc measurement firmware: answers the line protocol of docs/mcu-protocol.md on the UART.
 * HELLO (who am I), RUN (time one planned layer kernel on synthetic data), RESET. */
#include <stdint.h>
#include "board.h"
#include "cm.h"
#include "kernels.h"
#include "proto.h"
#include "timer.h"

#ifndef FW_VERSION
#define FW_VERSION "0.1.0"
#endif
#define PROTO_VERSION 1u
#define MAX_REPEATS 255u

static line_t reply;                 /* the last RES, resent when a request is retried */
static uint32_t reply_seq;           /* its seq (0: none) */
static char rx[LINE_MAX];
static uint64_t times[MAX_REPEATS];

static uint32_t span(const uint32_t *a, const uint32_t *b) { return (uint32_t)((const uint8_t *)b - (const uint8_t *)a); }

static void send_hello(const msg_t *req) {
  line_t l;
  uint32_t seq = 0;
  line_start(&l, "HELLO");
  if (req && msg_u32(req, "seq", &seq)) line_u64(&l, "seq", seq);
  else line_str(&l, "boot", "1");
  line_u64(&l, "proto", PROTO_VERSION);
  line_str(&l, "fw", FW_VERSION);
  line_str(&l, "board", BOARD_NAME);
  line_str(&l, "core", CORE_NAME);
  line_u64(&l, "clock_hz", BOARD_CLOCK_HZ);
  line_str(&l, "timer", timer_name());
  line_u64(&l, "flash", span(&__flash_start, &__flash_end));
  line_u64(&l, "sram", span(&__ram_start, &__ram_end));
  line_u64(&l, "fw_flash", span(&__flash_start, &__etext) + span(&__data_start, &__data_end));
  line_u64(&l, "fw_sram", span(&__data_start, &__bss_end) + span(&__stack_bottom, &__stack_top));
  line_u64(&l, "arena", span(&__arena_start, &__arena_end));
  line_str(&l, "kernels", "s8,s4,s2");
  line_send(&l);
}

static void send_simple(const char *cmd, uint32_t seq, const char *key, const char *val) {
  line_t l;
  line_start(&l, cmd);
  line_u64(&l, "seq", seq);
  if (key) line_str(&l, key, val);
  line_send(&l);
}

static void res_status(line_t *l, const char *id, uint32_t seq, const char *status, const char *note) {
  line_start(l, "RES");
  line_u64(l, "seq", seq);
  line_str(l, "id", id);
  line_str(l, "status", status);
  if (note) line_str(l, "note", note);
}

static int hex8_parse(const char *s, uint32_t *out) {
  uint32_t v = 0;
  int n = 0;
  for (; *s; s++, n++) {
    char c = *s;
    int h = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (h < 0 || n == 8) return 0;
    v = (v << 4) | (uint32_t)h;
  }
  *out = v;
  return n == 8;
}

static void sort(uint64_t *a, uint32_t n) {
  for (uint32_t i = 1; i < n; i++) {
    uint64_t v = a[i];
    uint32_t j = i;
    for (; j > 0 && a[j - 1] > v; j--) a[j] = a[j - 1];
    a[j] = v;
  }
}

/* Fills `reply` for one RUN request. */
static void run(const msg_t *m, uint32_t seq) {
  static const char *need_lin[] = {"pos", "in", "out"};
  static const char *need_conv[] = {"n", "c", "h", "w", "k", "kh", "kw", "stride", "pad", "groups"};
  const char *id = msg_get(m, "id"), *op = msg_get(m, "op");
  layer_t L = {0};
  uint32_t abits, group = 0, seed, warmup, repeats;
  if (!id) id = "-";
  if (!op || !msg_u32(m, "wbits", &L.wbits) || !msg_u32(m, "abits", &abits) || !msg_u32(m, "seed", &seed) ||
      !msg_u32(m, "warmup", &warmup) || !msg_u32(m, "repeats", &repeats)) {
    res_status(&reply, id, seq, "error", "missing_field");
    return;
  }
  msg_u32(m, "group", &group);
  int is_lin = op[0] == 'l' && op[1] == 'i', is_conv = op[0] == 'c' && op[1] == 'o';
  if (!is_lin && !is_conv) { res_status(&reply, id, seq, "unsupported", "op"); return; }
  L.op = is_lin ? OP_LINEAR : OP_CONV2D;
  uint32_t *dst_lin[] = {&L.pos, &L.in, &L.out};
  uint32_t *dst_conv[] = {&L.n, &L.c, &L.h, &L.w, &L.k, &L.kh, &L.kw, &L.stride, &L.pad, &L.groups};
  for (unsigned i = 0; i < (is_lin ? 3u : 10u); i++) {
    if (!msg_u32(m, is_lin ? need_lin[i] : need_conv[i], is_lin ? dst_lin[i] : dst_conv[i])) {
      res_status(&reply, id, seq, "error", "missing_shape");
      return;
    }
  }
  if (abits != 8 || (L.wbits != 8 && L.wbits != 4 && L.wbits != 2)) {
    res_status(&reply, id, seq, "unsupported", "bits");
    return;
  }
  if (group != 0) { res_status(&reply, id, seq, "unsupported", "group_scales"); return; }
  if (repeats < 1 || repeats > MAX_REPEATS) { res_status(&reply, id, seq, "error", "repeats"); return; }
  if (layer_geometry(&L) != 0) { res_status(&reply, id, seq, "error", "shape"); return; }
  if (layer_bytes(&L) > span(&__arena_start, &__arena_end)) {
    res_status(&reply, id, seq, "oom", "arena");
    line_u64(&reply, "need", layer_bytes(&L));
    return;
  }
  layer_alloc(&L, (uint8_t *)&__arena_start);
  layer_fill(&L, seed);
  for (uint32_t i = 0; i < warmup; i++) layer_run(&L);
  for (uint32_t i = 0; i < repeats; i++) {
    uint64_t t0 = timer_now();
    layer_run(&L);
    times[i] = timer_now() - t0;
  }
  uint32_t sum = crc32_update(0, L.y, L.y_len), want = 0;
  const char *e = msg_get(m, "expect");
  int match = !e || (hex8_parse(e, &want) && want == sum);
  sort(times, repeats);
  uint64_t med = repeats & 1u ? times[repeats / 2] : (times[repeats / 2 - 1] + times[repeats / 2]) / 2u;
  res_status(&reply, id, seq, match ? "ok" : "error", match ? 0 : "checksum");
  line_u64(&reply, "cycles", med);
  line_u64(&reply, "min", times[0]);
  line_u64(&reply, "max", times[repeats - 1]);
  line_u64(&reply, "n", repeats);
  line_hex(&reply, "sum", sum);
}

static void handle(char *buf) {
  msg_t m;
  uint32_t seq = 0;
  int rc = msg_parse(buf, &m);
  if (rc == -1) { send_simple("NAK", 0, "reason", "framing"); return; }
  if (rc == -2) { send_simple("NAK", 0, "reason", "crc"); return; }
  if (rc != 0 || !msg_u32(&m, "seq", &seq) || seq == 0) { send_simple("NAK", 0, "reason", "parse"); return; }
  const char *c = m.cmd;
  if (c[0] == 'H' && c[1] == 'E') { send_hello(&m); return; }
  if (c[0] == 'R' && c[1] == 'U') {
    send_simple("ACK", seq, 0, 0);
    if (seq != reply_seq) {          /* a retried seq gets the cached reply, not a rerun */
      run(&m, seq);
      reply_seq = seq;
    }
    line_send(&reply);
    return;
  }
  if (c[0] == 'R' && c[1] == 'E') { send_simple("ACK", seq, 0, 0); board_reset(); }
  send_simple("NAK", seq, "reason", "unknown_command");
}

int main(void) {
  size_t n = 0;
  int overflow = 0;
  board_init();
  timer_init();
  send_hello(0);
  for (;;) {
    int ch;
    irq_disable();
    while ((ch = board_getc()) < 0) {   /* sleep until the UART interrupt; WFI wakes with PRIMASK set */
      board_idle();
      irq_enable();
      irq_disable();
    }
    irq_enable();
    if (ch == '\r') continue;
    if (ch != '\n') {
      if (n < LINE_MAX - 1) rx[n++] = (char)ch; else overflow = 1;
      continue;
    }
    rx[n] = 0;
    if (overflow) send_simple("NAK", 0, "reason", "too_long");
    else if (n) handle(rx);
    n = 0;
    overflow = 0;
  }
}
