#include "proto.h"
#include "board.h"

uint32_t crc32_update(uint32_t crc, const void *data, size_t n) {
  const uint8_t *p = (const uint8_t *)data;
  crc = ~crc;
  while (n--) {
    crc ^= *p++;
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

static void put(line_t *l, char c) {
  if (l->len < LINE_MAX - 12) l->buf[l->len++] = c;  /* room for the *CRC trailer */
}
static void puts_(line_t *l, const char *s) { while (*s) put(l, *s++); }

void line_start(line_t *l, const char *cmd) { l->len = 0; puts_(l, cmd); }
void line_str(line_t *l, const char *key, const char *val) { put(l, ' '); puts_(l, key); put(l, '='); puts_(l, val); }
void line_u64(line_t *l, const char *key, uint64_t v) {
  char tmp[21];
  int i = 20;
  tmp[i] = 0;
  do { tmp[--i] = (char)('0' + v % 10u); v /= 10u; } while (v);
  line_str(l, key, tmp + i);
}
static void hex8(char *out, uint32_t v) {
  for (int i = 7; i >= 0; i--) { out[i] = "0123456789abcdef"[v & 15u]; v >>= 4; }
  out[8] = 0;
}
void line_hex(line_t *l, const char *key, uint32_t v) { char t[9]; hex8(t, v); line_str(l, key, t); }

void line_send(const line_t *l) {
  char t[9];
  hex8(t, crc32_update(0, l->buf, l->len));
  for (size_t i = 0; i < l->len; i++) board_putc(l->buf[i]);
  board_putc('*');
  for (int i = 0; i < 8; i++) board_putc(t[i]);
  board_putc('\n');
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int msg_parse(char *buf, msg_t *m) {
  char *star = 0;
  for (char *p = buf; *p; p++) if (*p == '*') star = p;
  if (!star) return -1;
  uint32_t want = 0;
  int nd = 0;
  for (char *p = star + 1; *p; p++, nd++) {
    int h = hexval(*p);
    if (h < 0) return -1;
    want = (want << 4) | (uint32_t)h;
  }
  if (nd != 8) return -1;
  if (crc32_update(0, buf, (size_t)(star - buf)) != want) return -2;
  *star = 0;
  m->n = 0;
  m->cmd = 0;
  char *p = buf;
  while (*p) {
    while (*p == ' ') *p++ = 0;
    if (!*p) break;
    char *tok = p;
    while (*p && *p != ' ') p++;
    if (!m->cmd) { m->cmd = tok; continue; }
    char *eq = tok;
    while (eq < p && *eq != '=') eq++;
    if (eq == p || m->n == MAX_FIELDS) return -3;
    *eq = 0;
    m->key[m->n] = tok;
    m->val[m->n] = eq + 1;
    m->n++;
  }
  return m->cmd ? 0 : -3;
}

static int streq(const char *a, const char *b) {
  while (*a && *a == *b) { a++; b++; }
  return *a == *b;
}

const char *msg_get(const msg_t *m, const char *key) {
  for (int i = 0; i < m->n; i++) if (streq(m->key[i], key)) return m->val[i];
  return 0;
}

int msg_u32(const msg_t *m, const char *key, uint32_t *out) {
  const char *v = msg_get(m, key);
  if (!v || !*v) return 0;
  uint64_t x = 0;
  for (; *v; v++) {
    if (*v < '0' || *v > '9') return 0;
    x = x * 10u + (uint64_t)(*v - '0');
    if (x > 0xFFFFFFFFu) return 0;
  }
  *out = (uint32_t)x;
  return 1;
}
