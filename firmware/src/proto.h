/* Line protocol framing (docs/mcu-protocol.md): every line is `BODY*CCCCCCCC\n`, CCCCCCCC the
 * CRC-32 (IEEE 802.3, as zlib.crc32) of BODY in lower-case hex; BODY is a command word followed
 * by space-separated key=value fields. */
#ifndef PROTO_H
#define PROTO_H
#include <stddef.h>
#include <stdint.h>

#define LINE_MAX 384
uint32_t crc32_update(uint32_t crc, const void *data, size_t n);  /* crc = 0 to start */

/* Output line builder. */
typedef struct { char buf[LINE_MAX]; size_t len; } line_t;
void line_start(line_t *l, const char *cmd);
void line_str(line_t *l, const char *key, const char *val);
void line_u64(line_t *l, const char *key, uint64_t v);
void line_hex(line_t *l, const char *key, uint32_t v);
void line_send(const line_t *l);   /* appends *CRC and \n, writes to the UART */

/* Parsed input line (fields point into the caller's buffer). */
#define MAX_FIELDS 24
typedef struct {
  const char *cmd;
  int n;
  const char *key[MAX_FIELDS];
  const char *val[MAX_FIELDS];
} msg_t;
/* 0: ok; -1: no/invalid CRC trailer; -2: CRC mismatch; -3: malformed fields. Modifies buf. */
int msg_parse(char *buf, msg_t *m);
const char *msg_get(const msg_t *m, const char *key);
int msg_u32(const msg_t *m, const char *key, uint32_t *out);  /* 1 when present and numeric */
#endif
