#include "kernels.h"

static uint32_t prng_state;
static void prng_seed(uint32_t seed) { prng_state = seed ^ 0x9E3779B9u; if (!prng_state) prng_state = 1; }
static uint32_t prng_next(void) {            /* xorshift32 (Marsaglia 2003) */
  uint32_t s = prng_state;
  s ^= s << 13; s ^= s >> 17; s ^= s << 5;
  return prng_state = s;
}

static uint32_t clog2(uint32_t x) { uint32_t b = 0; while ((1u << b) < x) b++; return b; }

int layer_geometry(layer_t *L) {
  if (L->op == OP_LINEAR) {
    if (!L->pos || !L->in || !L->out) return -1;
    L->rows = L->out; L->row_len = L->in;
    L->x_len = L->pos * L->in; L->y_len = L->pos * L->out;
  } else {
    if (!L->n || !L->c || !L->h || !L->w || !L->k || !L->kh || !L->kw || !L->stride || !L->groups) return -1;
    if (L->c % L->groups || L->k % L->groups) return -1;
    if (L->h + 2 * L->pad < L->kh || L->w + 2 * L->pad < L->kw) return -1;
    L->oh = (L->h + 2 * L->pad - L->kh) / L->stride + 1;
    L->ow = (L->w + 2 * L->pad - L->kw) / L->stride + 1;
    L->rows = L->k; L->row_len = (L->c / L->groups) * L->kh * L->kw;
    L->x_len = L->n * L->c * L->h * L->w; L->y_len = L->n * L->k * L->oh * L->ow;
  }
  L->row_bytes = (L->row_len * L->wbits + 7u) / 8u;
  L->shift = 13u + L->wbits + (clog2(L->row_len) + 1u) / 2u;
  return 0;
}

static uint32_t up4(uint32_t x) { return (x + 3u) & ~3u; }

uint32_t layer_bytes(const layer_t *L) {
  return up4(L->rows * L->row_bytes) + up4(L->x_len) + up4(L->y_len) + 8u * L->rows +
         (L->wbits < 8 ? up4(L->row_len) : 0u);
}

void layer_alloc(layer_t *L, uint8_t *a) {
  L->bias = (int32_t *)a; a += 4u * L->rows;
  L->mult = (int32_t *)a; a += 4u * L->rows;
  L->wpk = a; a += up4(L->rows * L->row_bytes);
  L->x = (int8_t *)a; a += up4(L->x_len);
  L->y = (int8_t *)a; a += up4(L->y_len);
  L->scratch = L->wbits < 8 ? (int8_t *)a : 0;
}

void layer_fill(layer_t *L, uint32_t seed) {
  const uint32_t b = L->wbits, mask = (1u << b) - 1u;
  prng_seed(seed);
  for (uint32_t r = 0; r < L->rows; r++) {
    uint8_t *row = L->wpk + r * L->row_bytes;
    for (uint32_t i = 0; i < L->row_bytes; i++) row[i] = 0;
    for (uint32_t j = 0; j < L->row_len; j++) {
      int32_t v = (int32_t)(prng_next() >> (32u - b)) - (int32_t)(1u << (b - 1u));
      uint32_t bit = j * b;
      row[bit >> 3] |= (uint8_t)(((uint32_t)v & mask) << (bit & 7u));
    }
  }
  for (uint32_t i = 0; i < L->x_len; i++) L->x[i] = (int8_t)((int32_t)(prng_next() >> 24) - 128);
  for (uint32_t o = 0; o < L->rows; o++) L->bias[o] = (int32_t)(prng_next() >> 20) - 2048;
  for (uint32_t o = 0; o < L->rows; o++) L->mult[o] = 16384 + (int32_t)(prng_next() >> 18);
}

/* The int8 weights of output channel r: the packed row itself, or unpacked into scratch. */
static const int8_t *weight_row(const layer_t *L, uint32_t r) {
  const uint8_t *p = L->wpk + r * L->row_bytes;
  if (L->wbits == 8) return (const int8_t *)p;
  int8_t *s = L->scratch;
  const uint32_t n = L->row_len;
  if (L->wbits == 4) {
    for (uint32_t j = 0; j + 1 < n; j += 2, p++) {
      s[j] = (int8_t)((int8_t)(*p << 4) >> 4);
      s[j + 1] = (int8_t)((int8_t)*p >> 4);
    }
    if (n & 1u) s[n - 1] = (int8_t)((int8_t)(*p << 4) >> 4);
  } else {                                   /* 2 bits */
    uint32_t j = 0;
    for (; j + 3 < n; j += 4, p++) {
      uint8_t v = *p;
      s[j] = (int8_t)((int8_t)(v << 6) >> 6);
      s[j + 1] = (int8_t)((int8_t)(v << 4) >> 6);
      s[j + 2] = (int8_t)((int8_t)(v << 2) >> 6);
      s[j + 3] = (int8_t)((int8_t)v >> 6);
    }
    for (uint32_t k = 0; j < n; j++, k += 2) s[j] = (int8_t)((int8_t)(*p << (6u - k)) >> 6);
  }
  return s;
}

static inline int8_t requant(int32_t acc, int32_t mult, uint32_t shift) {
  int64_t t = ((int64_t)acc * mult + ((int64_t)1 << (shift - 1u))) >> shift;
  return (int8_t)(t > 127 ? 127 : t < -128 ? -128 : t);
}

static int32_t dot(const int8_t *x, const int8_t *w, uint32_t n) {
  int32_t acc = 0;
  uint32_t i = 0;
  for (; i + 3 < n; i += 4)
    acc += x[i] * w[i] + x[i + 1] * w[i + 1] + x[i + 2] * w[i + 2] + x[i + 3] * w[i + 3];
  for (; i < n; i++) acc += x[i] * w[i];
  return acc;
}

static void linear(const layer_t *L) {
  for (uint32_t o = 0; o < L->out; o++) {
    const int8_t *w = weight_row(L, o);
    for (uint32_t p = 0; p < L->pos; p++)
      L->y[p * L->out + o] = requant(L->bias[o] + dot(L->x + p * L->in, w, L->in), L->mult[o], L->shift);
  }
}

static void conv2d(const layer_t *L) {
  const uint32_t cg = L->c / L->groups, kg = L->k / L->groups, khw = L->kh * L->kw;
  for (uint32_t o = 0; o < L->k; o++) {
    const int8_t *w = weight_row(L, o);
    const uint32_t g = o / kg;
    for (uint32_t b = 0; b < L->n; b++) {
      const int8_t *xb = L->x + (b * L->c + g * cg) * L->h * L->w;
      int8_t *yo = L->y + (b * L->k + o) * L->oh * L->ow;
      for (uint32_t oy = 0; oy < L->oh; oy++) {
        for (uint32_t ox = 0; ox < L->ow; ox++) {
          int32_t acc = L->bias[o];
          const int32_t iy0 = (int32_t)(oy * L->stride) - (int32_t)L->pad;
          const int32_t ix0 = (int32_t)(ox * L->stride) - (int32_t)L->pad;
          /* the kernel window clipped to the input: no bounds checks in the MAC loop */
          const uint32_t ky0 = iy0 < 0 ? (uint32_t)-iy0 : 0u, kx0 = ix0 < 0 ? (uint32_t)-ix0 : 0u;
          const uint32_t ky1 = (int32_t)L->kh < (int32_t)L->h - iy0 ? L->kh : (uint32_t)((int32_t)L->h - iy0);
          const uint32_t kx1 = (int32_t)L->kw < (int32_t)L->w - ix0 ? L->kw : (uint32_t)((int32_t)L->w - ix0);
          for (uint32_t ic = 0; ic < cg; ic++) {
            const int8_t *xc = xb + ic * L->h * L->w + ix0;
            const int8_t *wc = w + ic * khw;
            for (uint32_t ky = ky0; ky < ky1; ky++) {
              const int8_t *xr = xc + (uint32_t)(iy0 + (int32_t)ky) * L->w;
              const int8_t *wr = wc + ky * L->kw;
              for (uint32_t kx = kx0; kx < kx1; kx++) acc += xr[kx] * wr[kx];
            }
          }
          yo[oy * L->ow + ox] = requant(acc, L->mult[o], L->shift);
        }
      }
    }
  }
}

void layer_run(const layer_t *L) {
  if (L->op == OP_LINEAR) linear(L); else conv2d(L);
}
