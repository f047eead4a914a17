"""Encoders of llama.cpp's K-quant blocks (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), vectorized in numpy.

The `gguf` package decodes these types but cannot encode them; these functions write the
documented block layouts (ggml-common.h; one super-block = QK_K = 256 weights of one row):

| type | bytes | bits/weight | layout of one super-block |
|---|---|---|---|
| Q2_K | 84  | 2.625  | scales[16] (4-bit scale, 4-bit min per 16 weights) · qs[64] (2-bit) · d f16 · dmin f16 |
| Q3_K | 110 | 3.4375 | hmask[32] (high bit) · qs[64] (low 2 bits) · scales[12] (16 × 6-bit signed) · d f16 |
| Q4_K | 144 | 4.5    | d f16 · dmin f16 · scales[12] (8 × 6-bit scale + 8 × 6-bit min per 32) · qs[128] |
| Q5_K | 176 | 5.5    | d f16 · dmin f16 · scales[12] (as Q4_K) · qh[32] (5th bit) · qs[128] |
| Q6_K | 210 | 6.5625 | ql[128] (low 4 bits) · qh[64] (high 2 bits) · scales[16] (int8 per 16) · d f16 |

Decoded weight: Q2_K/Q4_K/Q5_K `d·sc·q − dmin·m` (asymmetric, q ≥ 0); Q3_K/Q6_K `d·sc·q`
with signed q. The scale search follows ggml's reference encoders: an affine least-squares fit
over a sweep of candidate inverse scales for the asymmetric types, a weighted symmetric fit over
±0.9 around the max for the symmetric ones, then the sub-block scales are themselves quantized
and the weights re-rounded with the stored scales. With an importance matrix (llama.cpp's
imatrix, E[x_j²] per input column) the fits weight each weight's error as ggml's
`quantize_row_*_impl` do: qw·sqrt(σ² + x²) (Q2_K…Q5_K, σ² from the super-block's mean x²; the
wider sweep −0.9 + 0.05·i, i ≤ 36, of make_qkx3_quants for the asymmetric types) and qw alone
for Q6_K. One simplification: the sub-block scales are then quantized without ggml's weighted
make_qp_quants refit.
"""
from __future__ import annotations

import numpy as np

QK_K = 256
TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
_CHUNK = 16384  # super-blocks encoded at once (bounds temporary memory to ~100 MB)


def encode(w: np.ndarray, qtype: str, importance: np.ndarray | None = None) -> np.ndarray:
    """`w: (rows, cols)` float, cols a multiple of 256 → uint8 (rows, cols/256 · bytes per block).
    importance: optional (cols,) non-negative weight of each input column (llama.cpp's imatrix,
    E[x_j²]); it weights the scale search as ggml's `quantize_row_*_impl` with quant_weights."""
    w = np.asarray(w, dtype=np.float32)
    if qtype not in _ENCODERS:
        raise ValueError(f"{qtype} is not a K-quant type ({', '.join(TYPES)})")
    if w.ndim != 2 or w.shape[1] % QK_K:
        raise ValueError(f"{qtype} needs rows of a multiple of {QK_K} weights, got shape {w.shape}")
    blocks = w.reshape(-1, QK_K)
    qw = None
    if importance is not None:
        imp = np.asarray(importance, dtype=np.float32).reshape(-1)
        if imp.shape != (w.shape[1],) or not np.isfinite(imp).all() or (imp < 0).any():
            raise ValueError(f"importance must be {w.shape[1]} finite non-negative values, got shape {imp.shape}")
        per_row = imp.reshape(-1, QK_K)  # (blocks per row, 256), the same for every row
        qw = np.broadcast_to(per_row[None], (w.shape[0], *per_row.shape)).reshape(-1, QK_K)
    out = [_ENCODERS[qtype](blocks[i:i + _CHUNK], None if qw is None else qw[i:i + _CHUNK])
           for i in range(0, len(blocks), _CHUNK)]
    return np.concatenate(out).reshape(w.shape[0], -1)


def _imatrix_weights(x, qw, sub, sigma_scale):
    """ggml's error weights with an importance matrix: qw · sqrt(σ² + x²), σ² = sigma_scale ·
    mean(x²) over the super-block; x, qw (nb, 256) → (nb · 256/sub, sub)."""
    sigma2 = sigma_scale * (x * x).mean(1, keepdims=True)
    return (qw * np.sqrt(sigma2 + x * x)).reshape(-1, sub)


# ---- scale fits, one row of `x` per sub-block -------------------------------------------------
def _rowdot(a, b):
    """Σ_j a[i, j]·b[i, j] for every row i."""
    return np.einsum("ij,ij->i", a, b)


def _affine_fit(x, w, nmax, rmin, rdelta, nstep, mad):
    """Best (scale, min) with x ≈ scale·L − min, L in 0..nmax, min ≥ 0, by weighted least squares
    over candidate inverse scales (rmin + rdelta·i + nmax)/(max − min), i = 0..nstep; the error
    is Σ w·|d| when `mad`, else Σ w·d². x, w: (B, n) → scale (B,), min (B,) (both ≥ 0)."""
    lo = np.minimum(x.min(1), 0)
    hi = x.max(1)
    flat = hi <= lo
    wx = w * x
    sum_w, sum_x, sum_x2 = w.sum(1), wx.sum(1), _rowdot(wx, x)

    def err(scale, mn, L, sl, sl2, sxl):
        if mad:
            return _rowdot(w, np.abs(scale[:, None] * L + (mn[:, None] - x)))
        # Σ w (sL + m − x)², expanded so that no (B, n) temporary is needed
        return (scale * scale * sl2 + 2 * scale * mn * sl - 2 * scale * sxl + mn * mn * sum_w
                - 2 * mn * sum_x + sum_x2)

    span = np.where(flat, 1, hi - lo)
    L = np.clip(np.rint((nmax / span)[:, None] * (x - lo[:, None])), 0, nmax)
    scale = span / nmax
    mn = lo.copy()
    best = err(scale, mn, L, _rowdot(w, L), _rowdot(w, L * L), _rowdot(wx, L))
    for i in range(nstep + 1):
        iscale = (rmin + rdelta * i + nmax) / np.where(hi > mn, hi - mn, 1)
        La = np.clip(np.rint(iscale[:, None] * (x - mn[:, None])), 0, nmax)
        sl, sl2, sxl = _rowdot(w, La), _rowdot(w * La, La), _rowdot(wx, La)
        D = sum_w * sl2 - sl * sl
        ok = D > 0
        Ds = np.where(ok, D, 1)
        ts = (sum_w * sxl - sum_x * sl) / Ds
        tm = (sl2 * sum_x - sl * sxl) / Ds
        pos = tm > 0  # the minimum may not be above zero: refit the scale alone
        tm = np.where(pos, 0, tm)
        ts = np.where(pos, sxl / np.where(sl2 > 0, sl2, 1), ts)
        cur = err(ts, tm, La, sl, sl2, sxl)
        better = ok & (cur < best)
        best = np.where(better, cur, best)
        scale = np.where(better, ts, scale)
        mn = np.where(better, tm, mn)
    scale = np.where(flat, 0, scale)
    return scale.astype(np.float32), (-mn).astype(np.float32)


def _symmetric_fit(x, nmax, w=None):
    """Best scale with x ≈ scale·L, L in −nmax..nmax−1, weights x² (ggml make_qx_quants, rmse 1)
    or `w`, over inverse scales −(nmax + 0.1·i)/max, i = −9..9, max the entry of largest |x|. (B,)."""
    imax = np.abs(x).argmax(1)
    mx = np.take_along_axis(x, imax[:, None], 1)[:, 0]
    zero = np.abs(mx) < 1e-15
    mx = np.where(zero, 1, mx)
    w = x * x if w is None else w
    wx = w * x
    best_scale = np.zeros(len(x), np.float32)
    best = np.zeros(len(x))
    for i in (0, *range(-9, 0), *range(1, 10)):  # the plain max-based scale first, as ggml does
        L = np.clip(np.rint((-(nmax + 0.1 * i) / mx)[:, None] * x), -nmax, nmax - 1)
        slx, sl2 = _rowdot(wx, L), _rowdot(w * L, L)
        ok = sl2 > 0
        s = slx / np.where(ok, sl2, 1)
        better = ok & ((slx * s > best) | (i == 0))  # squared error falls as slx²/sl2 grows
        best = np.where(better, slx * s, best)
        best_scale = np.where(better, s, best_scale)
    return np.where(zero, 0, best_scale).astype(np.float32)


def _f16(v):
    """Values as stored (float16) and their two bytes per entry."""
    h = np.asarray(v, dtype=np.float32).astype(np.float16)
    return h.astype(np.float32), h.view(np.uint8).reshape(len(h), 2)


def _quantize_scales(s, levels):
    """Non-negative sub-block scales (nb, k) → (super scale d as stored, levels 0..levels, bytes of d)."""
    top = s.max(1)
    d, d_bytes = _f16(top / levels)
    inv = np.where(top > 0, levels / np.where(top > 0, top, 1), 0)
    q = np.minimum(np.rint(inv[:, None] * s), levels).astype(np.uint8)
    return d, q, d_bytes


def _signed_super(s, levels):
    """Signed sub-block scales (nb, k) → (d as stored, int levels in −levels..levels−1, bytes of d):
    the scale of largest magnitude maps to −levels (ggml keeps its sign in d)."""
    imax = np.abs(s).argmax(1)
    top = np.take_along_axis(s, imax[:, None], 1)[:, 0]
    ok = np.abs(top) > 1e-15
    iscale = np.where(ok, -levels / np.where(ok, top, 1), 0)
    d, d_bytes = _f16(np.where(ok, 1 / np.where(ok, iscale, 1), 0))
    q = np.clip(np.rint(iscale[:, None] * s), -levels, levels - 1).astype(np.int32)
    return d, q, d_bytes


def _signed_levels(x, step, nmax):
    """Signed levels of x (nb, k, n) for per-sub-block steps (nb, k): clip(round(x/step), −nmax, nmax−1)."""
    safe = np.where(step != 0, step, 1)[..., None]
    return np.clip(np.rint(x / safe), -nmax, nmax - 1).astype(np.int32)


def _requant(x, step, offset, lo, hi):
    """Levels of x (nb, k, n) for per-sub-block step/offset (nb, k): clip(round((x + offset)/step))."""
    safe = np.where(step != 0, step, 1)[..., None]
    return np.clip(np.rint((x + offset[..., None]) / safe), lo, hi).astype(np.uint8)


# ---- bit packing ----------------------------------------------------------------------------
def _pack_2bit(L):
    """(nb, 256) levels 0..3 → (nb, 64): byte 32·h + l holds weights 128·h + l + 32·k at bits 2k."""
    q = L.reshape(-1, 2, 4, 32).astype(np.uint8) << np.array([0, 2, 4, 6], np.uint8)[None, None, :, None]
    return np.bitwise_or.reduce(q, axis=2).reshape(-1, 64)


def _pack_bitplane(bits):
    """(nb, 8·32) single bits → (nb, 32): bit k of byte m is weight 32·k + m."""
    q = bits.reshape(-1, 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]
    return np.bitwise_or.reduce(q, axis=1)


def _pack_nibbles(L):
    """(nb, 256) levels 0..15 → (nb, 128): byte 32·c + l holds weight 64·c + l (low) and 64·c + 32 + l (high)."""
    q = L.reshape(-1, 4, 2, 32).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def _pack_k4_scales(ls, lm):
    """8 six-bit scales and mins (nb, 8) → the 12-byte Q4_K/Q5_K scale field."""
    out = np.empty((len(ls), 12), np.uint8)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return out


# ---- the five types ---------------------------------------------------------------------------
def _q2_k(x, qw=None):
    nb = len(x)
    sub = x.reshape(nb * 16, 16)
    if qw is None:
        scale, mn = _affine_fit(sub, np.abs(sub), 3, -0.5, 0.1, 15, mad=True)
    else:
        scale, mn = _affine_fit(sub, _imatrix_weights(x, qw, 16, 1.0), 3, -0.9, 0.05, 36, mad=False)
    d, ls, d_bytes = _quantize_scales(scale.reshape(nb, 16), 15)
    dm, lm, dm_bytes = _quantize_scales(mn.reshape(nb, 16), 15)
    step = d[:, None] * ls
    L = _requant(x.reshape(nb, 16, 16), step, dm[:, None] * lm, 0, 3)
    return np.concatenate([ls | (lm << 4), _pack_2bit(L), d_bytes, dm_bytes], axis=1)


def _q3_k(x, qw=None):
    nb = len(x)
    w = None if qw is None else _imatrix_weights(x, qw, 16, 2.0)
    scale = _symmetric_fit(x.reshape(nb * 16, 16), 4, w).reshape(nb, 16)
    d, q, d_bytes = _signed_super(scale, 32)
    L = (_signed_levels(x.reshape(nb, 16, 16), d[:, None] * q, 4) + 4).reshape(nb, 256)
    l6 = (q + 32).astype(np.uint8)
    sc = np.empty((nb, 12), np.uint8)
    sc[:, 0:8] = (l6[:, :8] & 0xF) | ((l6[:, 8:] & 0xF) << 4)
    hi = (l6 >> 4).reshape(nb, 4, 4)  # [k, i] = scale 4k + i
    sc[:, 8:12] = np.bitwise_or.reduce(hi << (2 * np.arange(4, dtype=np.uint8))[None, :, None], axis=1)
    return np.concatenate([_pack_bitplane(L > 3), _pack_2bit(L & 3), sc, d_bytes], axis=1)


def _k4_fit(x, nmax, rmin, nstep, qw=None):
    nb = len(x)
    sub = x.reshape(nb * 8, 32)
    if qw is None:
        av = np.sqrt((sub * sub).mean(1, keepdims=True))
        scale, mn = _affine_fit(sub, av + np.abs(sub), nmax, rmin, 0.1, nstep, mad=False)
    else:  # ggml with quant_weights: make_qkx3_quants(-0.9, 0.05, 36)
        scale, mn = _affine_fit(sub, _imatrix_weights(x, qw, 32, 2.0), nmax, -0.9, 0.05, 36, mad=False)
    d, ls, d_bytes = _quantize_scales(scale.reshape(nb, 8), 63)
    dm, lm, dm_bytes = _quantize_scales(mn.reshape(nb, 8), 63)
    L = _requant(x.reshape(nb, 8, 32), d[:, None] * ls, dm[:, None] * lm, 0, nmax).reshape(nb, 256)
    return L, np.concatenate([d_bytes, dm_bytes, _pack_k4_scales(ls, lm)], axis=1)


def _q4_k(x, qw=None):
    L, head = _k4_fit(x, 15, -1.0, 20, qw)
    return np.concatenate([head, _pack_nibbles(L)], axis=1)


def _q5_k(x, qw=None):
    L, head = _k4_fit(x, 31, -0.5, 15, qw)
    high = L.reshape(-1, 4, 2, 32) >> 4  # bit 2c + h of qh[j] ← weight 64c + 32h + j
    return np.concatenate([head, _pack_bitplane(high.reshape(-1, 256)), _pack_nibbles(L & 0xF)], axis=1)


def _q6_k(x, qw=None):
    nb = len(x)
    w = None if qw is None else qw.reshape(nb * 16, 16)  # ggml: the importance alone
    scale = _symmetric_fit(x.reshape(nb * 16, 16), 32, w).reshape(nb, 16)
    d, q, d_bytes = _signed_super(scale, 128)
    q = np.minimum(q, 127)
    L = (_signed_levels(x.reshape(nb, 16, 16), d[:, None] * q, 32) + 32).astype(np.uint8).reshape(nb, 2, 4, 32)  # [half, k, l] = 128h + 32k + l
    ql = np.concatenate([(L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4),
                         (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(nb, 128)
    qh = np.bitwise_or.reduce((L >> 4) << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None], axis=2)
    return np.concatenate([ql, qh.reshape(nb, 64), q.astype(np.int8).view(np.uint8), d_bytes], axis=1)


_ENCODERS = {"Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}
