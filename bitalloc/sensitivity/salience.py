"""`salience` (SliM-LLM, AWQ): activation-aware salience from calibration activations.

One forward pass over the calibration data (no backward) with a forward hook on each quantizable
layer collects the layer's input X as the (positions, in·kh·kw) matrix that multiplies the 2-D
weight (out, in·kh·kw): every token position of a Linear, every output position of a Conv (its
input unfolded into columns, in the weight's (in, kh, kw) order; a grouped conv gets one matrix
per conv group). From H̄ = XᵀX / n_positions (the input's second moment):

- `mode="diag"` (default, AWQ-style |W|·‖X‖ turned into an error weight):
  S = Σ_ij (Q(w)−w)_ij² · E[x_j²], c_j = H̄_jj: the expected squared output error of the unit's
  quantization without the cross terms between inputs. Only diag(H̄) is kept (cheap in memory).
- `mode="obs"` (SliM-LLM / GPTQ optimal-brain-surgeon salience W²/[H⁻¹]_jj turned into an error
  weight): c_j = 1/[(H̄ + λI)⁻¹]_jj with dampening λ = `damp`·mean(diag H̄). 1/[H̄⁻¹]_jj is the part
  of E[x_j²] that the other inputs cannot explain (a Schur complement), so c_obs ≤ c_diag (up to λ).
- `mode="exact"`: S = Σ_rows Δ H̄ Δᵀ with Δ = Q(W)−W restricted to the unit (the unit quantized
  alone): the exact expected squared output error E‖Δx‖², cross terms included. Output channels
  are independent, so channel scores sum to the layer score exactly; group scores drop the cross
  terms between groups and do not sum to the layer score.

Cost beyond the forward pass: diag keeps (in,) per layer; obs and exact keep H̄ (in × in, float32)
per layer (≈ 0.5 GB for SmolLM2-135M); obs inverts it (in³ per layer), exact multiplies
Δ H̄ (out·in² per layer and candidate), the slowest of the three on large layers.

diag and obs weight each element's squared error (`weighted_error`), so group and channel scores
sum exactly to the layer's. Scores are in units of squared output error, not of loss: they rank
units within a layer and, since outputs of different layers matter differently to the loss, only
roughly across layers (the `measured` estimator is the ground truth).
"""
from __future__ import annotations

import time

import numpy as np

from bitalloc.errors import BitallocError, bad
from bitalloc.profile import Profile
from bitalloc.sensitivity import register
from bitalloc.sensitivity.base import (DEFAULT_BITS, Estimator, fake_quant, feasible, layer_weight, units_by_layer,
                                       weighted_error)

MODES = ("diag", "obs", "exact")


@register("salience")
class SalienceEstimator(Estimator):
    """mode: diag | obs | exact (module docstring); damp: obs dampening, a fraction of mean(diag H̄).
    `estimate(task, progress)` calls progress(done, total) after each calibration batch."""

    passes = "1 forward"

    def __init__(self, bits=DEFAULT_BITS, granularity: str = "layer", group_size: int = 128,
                 symmetric: bool = False, zero: str = "int", mode: str = "diag", damp: float = 0.01):
        super().__init__(bits, granularity, group_size, symmetric, zero)
        if mode not in MODES:
            raise bad("salience mode", mode, f"allowed: {', '.join(MODES)}")
        if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 < damp < 1e3:
            raise bad("salience damp", damp, "must be a positive number (fraction of mean diag H), e.g. 0.01")
        self.mode, self.damp = mode, float(damp)

    def estimate(self, task, progress=None) -> Profile:
        t0 = time.perf_counter()
        units = self.units(task)
        stats = input_moments(task, full=self.mode != "diag", progress=progress)
        if self.mode == "exact":
            S = exact_error(task, units, self.quants, stats)
            score = "E||dW x||^2: (Q(W)-W) restricted to the unit, quadratic form with H = E[x x^T]"
        else:
            weight = obs_weight if self.mode == "obs" else diag_weight
            cache: dict[str, np.ndarray] = {}

            def weight_of(layer, W):
                if layer not in cache:
                    cache[layer] = weight(stats[layer], W.shape, self.damp)
                return cache[layer]

            S = weighted_error(task, units, self.quants, weight_of)
            score = ("sum (Q(w)-w)_ij^2 * E[x_j^2]" if self.mode == "diag" else
                     "sum (Q(w)-w)_ij^2 / [(H + damp*mean(diag H) I)^-1]_jj, H = E[x x^T]")
        positions = {n: int(s.n) for n, s in stats.items()}
        return self.profile(task, units, S, t0, mode=self.mode, score=score, samples=task.meta.get("samples"),
                            calib_batches=len(task.calib), positions=positions,
                            **({"damp": self.damp} if self.mode == "obs" else {}))


class Moments:
    """One layer's input statistics, on the device of its inputs. groups: conv groups (1 for
    Linear); n: positions seen; diag: (groups, cols) Σ x_j² (float64); full: (groups, cols, cols)
    Σ x xᵀ (float32, as GPTQ accumulates it) or None."""

    def __init__(self, groups: int, cols: int, full: bool, device=None):
        import torch

        self.n = 0
        from bitalloc.models.device import accumulator_dtype

        self.diag = torch.zeros(groups, cols, dtype=accumulator_dtype(device), device=device)
        self.full = torch.zeros(groups, cols, cols, dtype=torch.float32, device=device) if full else None

    def add(self, x) -> None:
        """x: (groups, positions, cols)."""
        import torch

        x = x.detach().float()
        self.n += x.shape[1]
        self.diag += x.pow(2).sum(1, dtype=self.diag.dtype)
        if self.full is not None:
            self.full.baddbmm_(x.transpose(1, 2), x)

    def mean_diag(self) -> np.ndarray:
        return self.diag.cpu().double().numpy() / self.n

    def mean_full(self) -> np.ndarray:
        return self.full.cpu().double().numpy() / self.n


def layer_columns(mod, x):
    """The input `x` of layer `mod` as (groups, positions, cols): the rows that multiply the
    layer's 2-D weight (out, cols); a grouped conv's output rows of group g see x[g]."""
    import torch
    import torch.nn.functional as F

    from bitalloc.models.layers import is_transposed

    if isinstance(mod, torch.nn.Linear) or is_transposed(mod):  # transformers Conv1D: x @ W, W (in, out)
        return x.reshape(1, -1, x.shape[-1])
    if isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d)):
        one_d = isinstance(mod, torch.nn.Conv1d)
        if x.dim() == mod.weight.dim() - 1:  # unbatched input
            x = x.unsqueeze(0)
        pad = mod._reversed_padding_repeated_twice
        if any(pad):
            x = F.pad(x, pad, mode="constant" if mod.padding_mode == "zeros" else mod.padding_mode)
        if one_d:
            x = x.unsqueeze(-2)
            kernel, dilation, stride = (1, mod.kernel_size[0]), (1, mod.dilation[0]), (1, mod.stride[0])
        else:
            kernel, dilation, stride = mod.kernel_size, mod.dilation, mod.stride
        cols = F.unfold(x, kernel, dilation=dilation, stride=stride)  # (B, C·kh·kw, L), C-major
        B, K, L = cols.shape
        g = mod.groups
        return cols.reshape(B, g, K // g, L).permute(1, 0, 3, 2).reshape(g, B * L, K // g)
    raise BitallocError(f"salience: layer type {type(mod).__name__} is not supported (Linear, Conv1d, Conv2d)")


def input_moments(task, full: bool, progress=None) -> dict[str, Moments]:
    """One forward pass (task.loss under no_grad, eval mode) over the calibration batches with a
    hook on each layer; hooks are removed and training flags restored afterwards."""
    import torch

    mods = task.modules()
    stats: dict[str, Moments] = {}
    hooks = []

    def hook(mod, args, kwargs, out, name):
        x = args[0] if args else kwargs.get("input")
        X = layer_columns(mod, x)
        if name not in stats:
            stats[name] = Moments(X.shape[0], X.shape[2], full, X.device)
        stats[name].add(X)

    flags = {m: m.training for m in task.model.modules()}
    try:
        for name, m in mods.items():
            hooks.append(m.register_forward_hook(lambda mod, a, k, o, name=name: hook(mod, a, k, o, name),
                                                 with_kwargs=True))
        task.model.eval()
        with torch.no_grad():
            for i, batch in enumerate(task.calib):
                task.loss(task.model, batch)
                if progress is not None:
                    progress(i + 1, len(task.calib))
    finally:
        for h in hooks:
            h.remove()
        for m, t in flags.items():
            m.training = t
    missing = [n for n in mods if n not in stats or stats[n].n == 0]
    if missing:
        raise BitallocError(f"salience: layer {missing[0]!r} saw no input in the calibration forward pass")
    return stats


def _per_row(c: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(groups, cols) per-column weights → (cols,) for one group, else (out, cols) by conv group."""
    if c.shape[0] == 1:
        return c[0]
    return np.repeat(c, shape[0] // c.shape[0], axis=0)


def diag_weight(st: Moments, shape, damp: float) -> np.ndarray:
    return _per_row(st.mean_diag(), shape)


def obs_weight(st: Moments, shape, damp: float) -> np.ndarray:
    """1 / diag((H̄ + λI)⁻¹), λ = damp·mean(diag H̄), per conv group; 0 for a layer (or conv
    group) whose inputs are all zero."""
    import torch

    H = torch.from_numpy(st.mean_full())
    out = torch.zeros(H.shape[0], H.shape[1], dtype=torch.float64)
    for g in range(H.shape[0]):
        lam = damp * float(torch.diagonal(H[g]).mean())
        if lam <= 0:
            continue
        eye = torch.eye(H.shape[1], dtype=torch.float64)
        Hd = H[g] + lam * eye
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:  # diag(H⁻¹)_j = Σ_i (L⁻¹)_ij², H = L Lᵀ (cholesky_inverse is far slower on CPU)
            inv_diag = torch.linalg.solve_triangular(L, eye, upper=False).pow(2).sum(0)
        else:  # not positive definite in floating point despite the dampening
            inv_diag = torch.diagonal(torch.linalg.pinv(Hd, hermitian=True))
        out[g] = 1.0 / inv_diag
    return _per_row(out.numpy(), shape)


def exact_error(task, units, quants, stats: dict[str, Moments]) -> np.ndarray:
    """S[n, k] = Σ_rows Δ_u H̄ Δ_uᵀ, Δ_u = (Q_k(W) − W) on unit n's block only. The product Δ H̄ runs
    in float32 (it dominates the cost: out·in² per layer and candidate), the sums in float64."""
    mods = task.modules()
    S = np.zeros((len(units), len(quants)))
    for layer, idx in units_by_layer(units).items():
        W = layer_weight(mods[layer])
        st = stats[layer]
        H = (st.full / st.n).cpu().numpy()  # (groups, cols, cols) float32
        G = H.shape[0]
        rows = [slice(g * (W.shape[0] // G), (g + 1) * (W.shape[0] // G)) for g in range(G)]
        for k, q in enumerate(quants):
            if not feasible(q, W.shape):
                S[idx, k] = np.inf
                continue
            D = fake_quant(q, W, np.diagonal(H, axis1=1, axis2=2).mean(0)) - W  # float32
            per_row = None
            for i in idx:
                u = units[i]
                if u.axis == 1:  # a group of input columns, quantized alone: its own block of H
                    a, b = u.index
                    S[i, k] = sum(float(_row_quad(D[r, a:b], H[g, a:b, a:b]).sum()) for g, r in enumerate(rows))
                else:  # layer or channel: whole rows, exact
                    if per_row is None:
                        per_row = np.concatenate([_row_quad(D[r], H[g]) for g, r in enumerate(rows)])
                    S[i, k] = float(u.block(per_row).sum())
    return S


def _row_quad(d: np.ndarray, h: np.ndarray) -> np.ndarray:
    """d_r h d_rᵀ for every row r of d (float32 product, float64 sum), ≥ 0 up to rounding."""
    import torch

    dt = torch.from_numpy(np.ascontiguousarray(d))
    q = ((dt @ torch.from_numpy(np.ascontiguousarray(h))).double() * dt.double()).sum(1)
    return np.maximum(q.numpy(), 0.0)
