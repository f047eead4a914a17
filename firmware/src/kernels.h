/* Layer kernels: int8 activations, int8 or bit-packed int4 / int2 weights (two's complement,
 * 8 / bits codes per byte, lowest bits first, each output channel's row padded to a whole
 * byte), an int32 bias and a per-output-channel requantization multiplier:
 *   y = clamp((acc * mult[o] + 2^(shift-1)) >> shift, -128, 127),  acc = bias[o] + sum x * w.
 * Packed rows are unpacked one output channel at a time into an int8 scratch row, then run by
 * the int8 loop (scratch: row_len bytes). Layouts: linear x[pos][in], w[out][in],
 * y[pos][out]; conv2d x[n][c][h][w], w[k][c/groups][kh][kw], y[n][k][oh][ow]. */
#ifndef KERNELS_H
#define KERNELS_H
#include <stdint.h>

enum { OP_LINEAR = 0, OP_CONV2D = 1 };

typedef struct {
  uint32_t op;
  uint32_t pos, in, out;                                   /* linear */
  uint32_t n, c, h, w, k, kh, kw, stride, pad, groups;     /* conv2d */
  uint32_t oh, ow;                                         /* conv2d output size */
  uint32_t wbits, rows, row_len, row_bytes, shift;
  uint8_t *wpk;            /* rows x row_bytes packed weights */
  int8_t *x, *y, *scratch; /* scratch: row_len bytes when wbits < 8 */
  int32_t *bias, *mult;    /* rows each */
  uint32_t x_len, y_len;
} layer_t;

/* Shapes, sizes and the requantization shift from the fields already set (op, shapes, wbits). */
int layer_geometry(layer_t *L);    /* 0 ok, -1 inconsistent shape */
uint32_t layer_bytes(const layer_t *L);  /* arena bytes the layer needs */
void layer_alloc(layer_t *L, uint8_t *arena);
void layer_fill(layer_t *L, uint32_t seed);  /* synthetic data, docs/mcu-protocol.md "Synthetic data" */
void layer_run(const layer_t *L);
#endif
