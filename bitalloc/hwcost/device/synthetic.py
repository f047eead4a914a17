"""The synthetic layer the measurement firmware runs for one plan row, computed on the host:
the same numbers from the same seed, the reference int8 output and its checksum, which the
board must reproduce (docs/mcu-protocol.md "Synthetic data"; firmware/src/kernels.c).

Draws (xorshift32, state = seed ^ 0x9E3779B9, 1 if that is 0), in this order:
1. weights, output channel by output channel, `row_len` each: `(r >> (32 - b)) - 2^(b-1)`
   (b = w_bits: 8, 4 or 2);
2. activations, x_len of them: `(r >> 24) - 128` (int8);
3. bias per output channel: `(r >> 20) - 2048` (int32);
4. multiplier per output channel: `16384 + (r >> 18)`.
Then `y = clamp((acc * mult + 2^(shift-1)) >> shift, -128, 127)` with `acc = bias + Σ x·w` and
`shift = 13 + b + (ceil(log2(row_len)) + 1) // 2`; the checksum is zlib's CRC-32 of y's int8
bytes (linear: y[pos][out]; conv2d: y[n][k][oh][ow]).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

SUPPORTED_W_BITS = (8, 4, 2)


def xorshift32(seed: int, count: int) -> np.ndarray:
    """(count,) uint32: the next `count` outputs of the firmware's generator from `seed`."""
    s = (seed ^ 0x9E3779B9) & 0xFFFFFFFF or 1
    out = np.empty(count, dtype=np.uint32)
    m = 0xFFFFFFFF
    for i in range(count):
        s ^= (s << 13) & m
        s ^= s >> 17
        s ^= (s << 5) & m
        out[i] = s
    return out


@dataclass(frozen=True)
class Layer:
    """op: linear | conv2d; shape: the plan row's shape dict; w_bits: 8, 4 or 2."""

    op: str
    shape: dict
    w_bits: int

    @property
    def rows(self) -> int:
        return self.shape["out"] if self.op == "linear" else self.shape["k"]

    @property
    def row_len(self) -> int:
        s = self.shape
        return s["in"] if self.op == "linear" else (s["c"] // s["groups"]) * s["kh"] * s["kw"]

    @property
    def x_shape(self) -> tuple[int, ...]:
        s = self.shape
        return (s["pos"], s["in"]) if self.op == "linear" else (s["n"], s["c"], s["h"], s["w"])

    @property
    def shift(self) -> int:
        return 13 + self.w_bits + ((int(self.row_len - 1).bit_length() if self.row_len > 1 else 0) + 1) // 2

    def arena_bytes(self) -> int:
        """Bytes of the firmware's arena this layer takes (firmware/src/kernels.c layer_bytes):
        packed weights, x, y, bias and multiplier, and a scratch row for sub-byte weights."""
        up4 = lambda n: (n + 3) // 4 * 4  # noqa: E731
        y_len = self.shape["pos"] * self.rows if self.op == "linear" else self._conv_y_len()
        return (up4(self.rows * ((self.row_len * self.w_bits + 7) // 8)) + up4(int(np.prod(self.x_shape))) + up4(y_len)
                + 8 * self.rows + (up4(self.row_len) if self.w_bits < 8 else 0))

    def _conv_y_len(self) -> int:
        s = self.shape
        oh = (s["h"] + 2 * s["pad"] - s["kh"]) // s["stride"] + 1
        ow = (s["w"] + 2 * s["pad"] - s["kw"]) // s["stride"] + 1
        return s["n"] * s["k"] * oh * ow

    def data(self, seed: int):
        """(w (rows, row_len) int64, x int64 of x_shape, bias (rows,), mult (rows,))."""
        b, rows, n = self.w_bits, self.rows, self.row_len
        x_len = int(np.prod(self.x_shape))
        r = xorshift32(seed, rows * n + x_len + 2 * rows).astype(np.int64)
        w = (r[: rows * n] >> (32 - b)) - (1 << (b - 1))
        r = r[rows * n:]
        x = (r[:x_len] >> 24) - 128
        bias = (r[x_len:x_len + rows] >> 20) - 2048
        mult = 16384 + (r[x_len + rows:] >> 18)
        return w.reshape(rows, n), x.reshape(self.x_shape), bias, mult

    def output(self, seed: int) -> np.ndarray:
        """The int8 output the firmware computes for `seed`."""
        w, x, bias, mult = self.data(seed)
        if self.op == "linear":
            acc = x @ w.T + bias  # (pos, out)
            mult_b = mult[None, :]
        else:
            s = self.shape
            g, cg, kg = s["groups"], s["c"] // s["groups"], s["k"] // s["groups"]
            p, st = s["pad"], s["stride"]
            xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
            win = np.lib.stride_tricks.sliding_window_view(xp, (s["kh"], s["kw"]), axis=(2, 3))[:, :, ::st, ::st]
            n, _, oh, ow = win.shape[:4]
            acc = np.empty((n, s["k"], oh, ow), dtype=np.int64)
            wk = w.reshape(s["k"], cg, s["kh"], s["kw"])
            for gi in range(g):
                acc[:, gi * kg:(gi + 1) * kg] = np.einsum("nchwij,kcij->nkhw", win[:, gi * cg:(gi + 1) * cg],
                                                          wk[gi * kg:(gi + 1) * kg], optimize=True)
            acc += bias[None, :, None, None]
            mult_b = mult[None, :, None, None]
        sh = self.shift
        y = (acc * mult_b + (1 << (sh - 1))) >> sh
        return np.clip(y, -128, 127).astype(np.int8)

    def checksum(self, seed: int) -> int:
        return zlib.crc32(np.ascontiguousarray(self.output(seed)).tobytes()) & 0xFFFFFFFF
