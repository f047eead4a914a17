"""GPTQ (Frantar et al., arXiv 2210.17323): levels chosen column by column, each column's rounding
error spread over the columns not yet quantized through the inverse of the layer's input Hessian
H = 2/n · Σ x xᵀ (optimal brain surgeon updates), so the layer's output error ‖(W − Q)X‖ falls
well below round-to-nearest's on the calibration inputs.

As in the paper's reference code: dampening (percdamp · mean diag H added to the diagonal), the
upper Cholesky factor of H⁻¹, lazy updates in column blocks (`blocksize`), optional activation
order (columns by descending diag H). Differences, each kept on bitalloc's grid:
- the grid is bitalloc's IntQuant (`quant.quantizer_for`): groups of `group_size` input columns in
  the layer's own column order, scales and zeros stored in float16 (rounded *before* the levels
  are chosen, so the error GPTQ compensates is the error of the stored weights);
- a group's scale and zero are computed from the current (already updated) weights when the group
  starts, i.e. when its first column is quantized in processing order (with activation order the
  group mapping stays the original one; `static_groups=True` instead computes every group from
  the unquantized weights up front);
- mixed bits inside a layer: each unit (`layer:gN` column group, `layer:cN` row, or the whole
  layer) is a Cell with its own bits; rows and groups are quantized at their own level count;
  kept-float cells (fp16) are not rounded and take no error;
- inputs that never fire (diag H = 0) get H_jj = 1 and keep their weights (the reference code
  zeroes them; that would discard weights the calibration did not exercise).

No maintained GPTQ library fits here: GPTQModel 7.7 is a source build pinned to torch >= 2.14.1
and torchao; llm-compressor 0.14 pins transformers <= 5.17 and pulls compressed-tensors, datasets,
auto-round and nvidia-ml-py; AutoRound is a different algorithm. None of them quantizes one layer
at several bit-widths (per group or per channel), which is what an allocation asks for
(docs/gptq.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitalloc.errors import bad
from bitalloc.quant.quantizers import register
from bitalloc.quant.quantizers.base import WeightQuantizer


@dataclass(frozen=True)
class Cell:
    """A rectangle of a layer's (out, in) weight matrix with one grid: rows / cols are (start,
    stop) or None (all); quant is an IntQuant (its groups start at the cell's first column) or
    None (kept in floating point)."""

    rows: tuple[int, int] | None
    cols: tuple[int, int] | None
    quant: object


def cells_of(units_quants) -> list[Cell]:
    """Cells from (Unit, quant) pairs (a Unit's `axis` 0 = rows, 1 = columns)."""
    out = []
    for u, q in units_quants:
        idx = None if u.index is None else tuple(int(i) for i in u.index)
        out.append(Cell(idx if u.axis == 0 else None, idx if u.axis == 1 else None, q))
    return out


@register("gptq")
class GptqQuantizer(WeightQuantizer):
    """blocksize: columns per lazy-update block (128); percdamp: dampening as a fraction of the
    mean Hessian diagonal (0.01); act_order: quantize columns by descending Hessian diagonal;
    static_groups: group scales from the unquantized weights (default: from the current weights
    when the group starts); device: torch device (default: the layer's own)."""

    name = "gptq"
    needs_inputs = True
    sequential = True

    def __init__(self, blocksize: int = 128, percdamp: float = 0.01, act_order: bool = False,
                 static_groups: bool = False, device: str | None = None):
        if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
            raise bad("blocksize", blocksize, "must be a positive integer")
        if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not 0 <= percdamp < 1 \
                or not np.isfinite(percdamp):
            raise bad("percdamp", percdamp, "must be a fraction in [0, 1)")
        for field, v in (("act_order", act_order), ("static_groups", static_groups)):
            if not isinstance(v, bool):
                raise bad(field, v, "must be true or false")
        self.blocksize, self.percdamp = blocksize, float(percdamp)
        self.act_order, self.static_groups, self.device = act_order, static_groups, device

    def quantize(self, w, quant, X=None):
        """One unit alone: its own block with its inputs X (n, in_features)."""
        if X is None:
            raise bad("X", None, "the gptq quantizer needs the layer's calibration inputs (n_samples, in_features)")
        w_hat, codes = self.quantize_layer(w, [Cell(None, None, quant)], hessian(X))
        return codes[0]

    def quantize_layer(self, w, cells: list[Cell], H):
        """w: (out, in) weights (numpy or torch); cells: covering w exactly once; H: (in, in) Hessian
        (torch or numpy, any scale). Returns (w_hat, codes): w_hat (out, in) float32 numpy, the
        dequantized layer (kept-float cells hold their updated weights); codes: per cell,
        (q, scale, zero) in `quant.encode`'s convention, or None for a kept-float cell."""
        return run_gptq(w, cells, H, self)


def hessian(X, device=None):
    """2/n · XᵀX (float32 accumulator) of calibration inputs X: (n, in_features)."""
    import torch

    X = torch.as_tensor(np.asarray(X, dtype=np.float32) if not torch.is_tensor(X) else X,
                        dtype=torch.float32, device=device)
    if X.ndim != 2 or len(X) == 0:
        raise bad("X shape", tuple(X.shape), "must be (n_samples >= 1, in_features)")
    return 2.0 / len(X) * (X.T @ X)


def _check_cells(cells, rows, cols):
    cover = np.zeros((rows, cols), dtype=np.int32)
    for c in cells:
        q = c.quant
        if q is not None and not hasattr(q, "symmetric"):
            raise bad("quantizer gptq with format", f"{q.bits}-bit {type(q).__name__}",
                      "gptq quantizes integer grids only; use --quantizer rtn for minifloat, MX and NVFP4 formats")
        r0, r1 = c.rows or (0, rows)
        c0, c1 = c.cols or (0, cols)
        cover[r0:r1, c0:c1] += 1
    if not (cover == 1).all():
        raise bad("gptq cells", len(cells), f"must cover the ({rows}, {cols}) layer exactly once")


class _Grid:
    """Per-element grid of the layer, transposed (in, out) in the original column order so that a
    column is contiguous: scale S, zero Z, top level L, kept-float mask K; `at`: the group batches
    that start at each processing position."""

    def __init__(self, cells, rows, cols, order, torch, device, dtype):
        self.torch = torch
        self.S = torch.zeros(cols, rows, dtype=dtype, device=device)
        self.Z = torch.zeros(cols, rows, dtype=dtype, device=device)
        self.L = torch.zeros(cols, rows, dtype=dtype, device=device)
        self.K = torch.zeros(cols, rows, dtype=torch.bool, device=device)
        pos = np.empty(cols, dtype=np.int64)
        pos[order] = np.arange(cols)
        starts: dict[tuple, list] = {}  # (first position, col tuple, form) → [(row range, bits)]
        self.form = None
        for c in cells:
            r0, r1 = c.rows or (0, rows)
            c0, c1 = c.cols or (0, cols)
            if c.quant is None:
                self.K[c0:c1, r0:r1] = True
                continue
            q = c.quant
            form = (bool(q.symmetric), q.zero)
            if self.form not in (None, form):
                raise bad("gptq cells", form, f"mix grid forms in one layer (also {self.form})")
            self.form = form
            g = (c1 - c0) if q.group_size is None else min(q.group_size, c1 - c0)
            for a in range(c0, c1, g):
                gc = tuple(range(a, min(a + g, c1)))
                starts.setdefault((int(pos[list(gc)].min()), gc), []).append((r0, r1, q.bits))
        self.at: dict[int, list] = {}
        for (p, gc), parts in starts.items():
            ridx = np.concatenate([np.arange(r0, r1) for r0, r1, _ in parts])
            bits = np.concatenate([np.full(r1 - r0, b) for r0, r1, b in parts])
            self.at.setdefault(p, []).append((torch.as_tensor(ridx, device=device),
                                              torch.as_tensor(gc, device=device),
                                              torch.as_tensor(bits, dtype=dtype, device=device)))

    def fit(self, x, ridx, gcols, bits):
        """Scale/zero of groups x: (g, r) current weights at `bits` (r,) per row, written into S/Z/L
        (IntQuant's formulas, scales and float minimums rounded to float16 as stored)."""
        torch = self.torch
        sym, zero = self.form
        b = bits[None, :]
        if sym:
            top = 2 ** (b - 1) - 1
            scale = (x.abs().amax(0, keepdim=True) / top).half().to(x.dtype)
            z = torch.zeros_like(scale)
        else:
            top = 2 ** b - 1
            lo, hi = x.amin(0, keepdim=True), x.amax(0, keepdim=True)
            if zero == "int":
                lo, hi = lo.clamp(max=0), hi.clamp(min=0)
            scale = ((hi - lo) / top).half().to(x.dtype)
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            z = lo.half().to(x.dtype) if zero == "float" else torch.clamp(torch.round(-lo / safe), torch.zeros_like(top), top)
        c, r = gcols[:, None], ridx[None, :]
        self.S[c, r] = scale.expand(len(gcols), -1)
        self.Z[c, r] = z.expand(len(gcols), -1)
        self.L[c, r] = top.expand(len(gcols), -1)

    def levels(self, w, col):
        """Levels (float, integral) and dequantized values of column `col` for the current w (rows,)."""
        torch = self.torch
        s, z, top = self.S[col], self.Z[col], self.L[col]
        safe = torch.where(s > 0, s, torch.ones_like(s))
        sym, zero = self.form or (False, "int")
        if sym:
            q = torch.clamp(torch.round(w / safe), -top - 1, top)
            deq = q * s
        elif zero == "float":
            q = torch.clamp(torch.round((w - z) / safe), torch.zeros_like(top), top)
            deq = q * s + z
        else:
            q = torch.clamp(torch.round(w / safe) + z, torch.zeros_like(top), top)
            deq = (q - z) * s
        keep = self.K[col]
        return torch.where(keep, torch.zeros_like(q), q), torch.where(keep, w, deq)


def run_gptq(w, cells, H, cfg: GptqQuantizer):
    """The column-blocked GPTQ loop over one layer (see GptqQuantizer.quantize_layer). On a CPU it
    runs on one thread: its many small operations (and cholesky_inverse) ran 3-7x slower with two
    threads on the shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_gptq(w, cells, H, cfg, torch)
    finally:
        torch.set_num_threads(threads)


def _run_gptq(w, cells, H, cfg, torch):

    W = w if torch.is_tensor(w) else torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    device = torch.device(cfg.device) if cfg.device else W.device
    dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    W = W.detach().to(device, dtype).reshape(W.shape[0], -1).clone()
    rows, cols = W.shape
    H = torch.as_tensor(H).to(device, dtype).clone()
    if H.shape != (cols, cols):
        raise bad("gptq Hessian shape", tuple(H.shape), f"must be ({cols}, {cols}) for a layer with {cols} inputs")
    _check_cells(cells, rows, cols)
    dead = torch.diagonal(H) <= 0
    H[dead, :] = 0
    H[:, dead] = 0
    H[dead, dead] = 1
    order = torch.argsort(torch.diagonal(H), descending=True, stable=True) if cfg.act_order \
        else torch.arange(cols, device=device)
    grid = _Grid(cells, rows, cols, order.cpu().numpy(), torch, device, dtype)
    Wt = W.T.contiguous()  # (in, out): a column is a contiguous row here
    if cfg.static_groups:
        for batches in grid.at.values():
            for ridx, gcols, bits in batches:
                grid.fit(Wt[gcols][:, ridx], ridx, gcols, bits)
        grid.at = {}
    Wp, Hp = Wt[order], H[order][:, order]
    Hp += cfg.percdamp * torch.mean(torch.diagonal(Hp)) * torch.eye(cols, dtype=dtype, device=device)
    U = _inverse_cholesky(Hp, torch)
    inv = torch.empty_like(order)
    inv[order] = torch.arange(cols, device=device)
    Q = torch.zeros_like(Wp)
    levels = torch.zeros_like(Wp)
    _column_loop(Wp, U, Q, levels, grid, order, inv, cfg.blocksize, torch)
    Q, levels = Q[inv].T, levels[inv].T
    return _outputs(Q, levels, grid, cells, rows, cols)


def _column_loop(Wp, U, Q, levels, grid, order, inv, B, torch):
    """Algorithm 1 of the paper on the transposed, permuted weights Wp (in, out), in place: Q gets
    the dequantized columns, levels their integer levels."""
    cols, dtype, device = len(Wp), Wp.dtype, Wp.device
    for i1 in range(0, cols, B):
        i2 = min(i1 + B, cols)
        W1, U1 = Wp[i1:i2].clone(), U[i1:i2, i1:i2]
        E1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            p = i1 + i
            for ridx, gcols, bits in grid.at.get(p, ()):  # groups whose first column (in order) this is
                ps = inv[gcols]  # their processing positions, all >= p
                cur = torch.empty(len(gcols), len(ridx), dtype=dtype, device=device)
                inb = ps < i2
                cur[inb] = W1[ps[inb] - i1][:, ridx]
                out = ps[~inb]
                if len(out):
                    cur[~inb] = (Wp[out] - U[i1:p, out].T @ E1[:i])[:, ridx]
                grid.fit(cur, ridx, gcols, bits)
            wcol = W1[i]
            lv, q = grid.levels(wcol, int(order[p]))
            Q[p], levels[p] = q, lv
            err = (wcol - q) / U1[i, i]
            W1[i:] -= U1[i, i:, None] * err[None, :]
            E1[i] = err
        Wp[i2:] -= U[i1:i2, i2:].T @ E1


def _inverse_cholesky(H, torch):
    """Upper Cholesky factor of H⁻¹ (more dampening if H is not positive definite in this precision)."""
    eye = torch.eye(len(H), dtype=H.dtype, device=H.device)
    mean = float(torch.mean(torch.diagonal(H)))
    for extra in (0.0, 1e-4, 1e-3, 1e-2, 1e-1):
        L, info = torch.linalg.cholesky_ex(H + extra * mean * eye)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                return U
    raise bad("gptq Hessian", "not positive definite", "raise percdamp")


def _outputs(Q, levels, grid, cells, rows, cols):
    w_hat = Q.float().cpu().numpy()
    lv = levels.cpu().numpy()
    S, Z = grid.S.T.float().cpu().numpy(), grid.Z.T.float().cpu().numpy()
    codes = []
    for c in cells:
        r0, r1 = c.rows or (0, rows)
        c0, c1 = c.cols or (0, cols)
        if c.quant is None:
            codes.append(None)
            continue
        g = (c1 - c0) if c.quant.group_size is None else min(c.quant.group_size, c1 - c0)
        first = np.arange(c0, c1, g)
        codes.append((np.rint(lv[r0:r1, c0:c1]).astype(np.int32), S[r0:r1][:, first].copy(), Z[r0:r1][:, first].copy()))
    return w_hat, codes
