"""`kv`: sensitivity of each attention layer's key and value cache (KVTuner).

Units are the kv units of `bitalloc.kvcache.kv_units` (one per cache per layer). For each unit and
candidate, only that cache is fake-quantized inside the attention forward (post-RoPE keys, as
HF Llama caches them; see bitalloc/quant/kvcache.py), the calibration data is run, and three figures
are recorded:
- `loss`: the model loss increase, loss(quantized) − loss(unquantized) on the calibration set
  (clipped at 0, as `measured` does);
- `kl`: the mean KL divergence, per output position, from the unquantized model's output
  distribution to the quantized one's (softmax over the output module's last dimension, e.g.
  `lm_head` logits). Never negative, so it is far less noisy than the loss difference on a few
  calibration sequences, which mixes a first-order term of either sign;
- `attention`: the relative error of that layer's attention output (after o_proj),
  Σ ||o_q − o||² / Σ ||o||² over the calibration tokens. The layer's input is unchanged (only its
  own cache is quantized), so this is the error that cache alone causes.
`score` picks the profile's sensitivity (`kl` by default); the others are kept in the profile as
top-level fields `loss_increase`, `kl`, `attention_error` (one row per unit). With
`score=attention` each pass stops after the unit's layer (only `attention_error` is measured).

Cost: 1 + units × candidates forward passes over the calibration set (the blocks before the
cache's layer replayed, see `reuse_prefix`); `kl` keeps the unquantized output of every
calibration batch in memory (batch · tokens · vocabulary floats).
"""
from __future__ import annotations

import time

import numpy as np

from bitalloc.errors import BitallocError, bad
from bitalloc.quant.kvcache import KVQuantConfig, cache_of, kv_format, kv_quantized, kv_units
from bitalloc.profile import Profile
from bitalloc.units import Unit
from bitalloc.sensitivity import register
from bitalloc.sensitivity.measured import MeasuredEstimator

SCORES = ("kl", "loss", "attention")


class _Stop(Exception):
    """Raised by the attention-output hook to end a pass early (score=attention)."""


@register("kv")
class KVEstimator(MeasuredEstimator):
    """bits: candidates (16 = keep the cache in fp16); group_size: scale/zero group (channels of a
    token or tokens of a channel, 32 by default as in KIVI); key_axis / value_axis: `token` or
    `channel` grouping (KIVI: keys per-channel, values per-token); symmetric, zero: the IntQuant
    form (a float minimum by default, as KIVI stores it); score: `kl`, `loss` or `attention`; units:
    None (all), an int, or names / globs, as in `measured`; reuse_prefix: replay the decoder
    blocks before the unit's layer from the unquantized pass instead of recomputing them (exact:
    their inputs do not depend on this cache; halves the cost on average)."""

    passes = "1 + units x candidates forward"

    def __init__(self, bits=(2, 4, 8), granularity: str = "layer", group_size: int = 32,
                 symmetric: bool = False, zero: str = "float", key_axis: str = "channel",
                 value_axis: str = "token", score: str = "kl", units=None, reuse_prefix: bool = True):
        if granularity != "layer":
            raise bad("granularity", granularity, "kv units are whole caches: use layer")
        if score not in SCORES:
            raise bad("kv score", score, f"allowed: {', '.join(SCORES)}")
        super().__init__(bits, granularity, group_size, symmetric, zero, units)
        self.config = KVQuantConfig(group_size, key_axis, value_axis, symmetric, zero)
        self.score, self.reuse_prefix = score, bool(reuse_prefix)
        self.quantizer = (f"int {'sym' if symmetric else 'asym'} ({zero} zero), keys per-{key_axis}, "
                          f"values per-{value_axis}, group {group_size}")

    def units(self, task) -> list[Unit]:
        return kv_units(task.model, self.config)

    def estimate(self, task, progress=None) -> Profile:
        import torch

        t0 = time.perf_counter()
        units = self.select(self.units(task))
        model = task.model
        mods = dict(model.named_modules())
        fmts = [kv_format(b) for b in self.bits]
        K = len(fmts)
        total = len(units) * K
        full = self.score != "attention"  # whole passes: loss and kl measured
        out_name = _output_module(model, mods) if full else None
        was_training = model.training
        L, D, A = (np.zeros((len(units), K)) for _ in range(3))  # loss increase, kl, attention error
        done = 0
        try:
            model.eval()
            blocks = _blocks(units)  # the decoder block of each attention layer, in model order
            watch = [u.layer for u in units] + (blocks if self.reuse_prefix else []) + ([out_name] if out_name else [])
            base_out: dict[str, list] = {n: [] for n in watch}
            with _capture(mods, list(base_out), base_out):
                base = task.mean_loss()
            if not np.isfinite(base):
                raise BitallocError(f"kv: the calibration loss of the unquantized model is {base}")
            for i, u in enumerate(units):
                for k, fmt in enumerate(fmts):
                    errs = [0.0, 0.0]  # Σ||o_q − o||², Σ||o||²
                    kl = [0.0, 0]  # Σ KL over output positions, positions
                    hooks = [mods[u.layer].register_forward_hook(_error_hook(base_out[u.layer], errs, stop=not full))]
                    if out_name:
                        hooks.append(mods[out_name].register_forward_hook(_kl_hook(base_out[out_name], kl)))
                    before = blocks[:blocks.index(_parent(u.layer))] if self.reuse_prefix else []
                    try:
                        for n in before:  # unchanged by this cache: replay their outputs instead of recomputing
                            mods[n].forward = _replay(base_out[n])
                        with kv_quantized(model, {u.name: fmt}, self.config), torch.no_grad():
                            if full:
                                L[i, k] = task.mean_loss() - base
                            else:
                                for b in task.calib:
                                    try:
                                        task.loss(model, b)
                                    except _Stop:
                                        pass
                    finally:
                        for h in hooks:
                            h.remove()
                        for n in before:
                            mods[n].__dict__.pop("forward", None)
                    A[i, k] = errs[0] / errs[1] if errs[1] > 0 else 0.0
                    D[i, k] = kl[0] / kl[1] if kl[1] else 0.0
                    done += 1
                    if progress is not None:
                        progress(done, total)
        finally:
            model.train(was_training)
        S = {"kl": D, "loss": L, "attention": A}[self.score]
        bad_cells = ~np.isfinite(S)
        if bad_cells.all(1).any():
            name = units[int(np.argmax(bad_cells.all(1)))].name
            raise BitallocError(f"kv: the score is not finite with cache {name!r} quantized at every candidate")
        raw_min = float(S[~bad_cells].min())
        clipped = int((S[~bad_cells] < 0).sum())
        S = np.where(bad_cells, np.inf, np.maximum(S, 0.0))
        n_passes = 1 + total
        p = self.profile(task, units, S, t0, passes=f"{n_passes} forward (1 + {len(units)} caches x {K} candidates)",
                         forward_passes=n_passes, base_loss=base, clipped=clipped, raw_min=raw_min,
                         non_finite=int(bad_cells.sum()), measured_units=len(units),
                         samples=task.meta.get("samples"), kind="kv", kv=self.config.to_meta(),
                         score=SCORE_TEXT[self.score], output_module=out_name,
                         caches={c: sum(cache_of(u.name) == c for u in units) for c in ("key", "value")})
        p.extra["attention_error"] = A.tolist()
        if full:
            p.extra["loss_increase"] = L.tolist()
            p.extra["kl"] = D.tolist()
        return p


SCORE_TEXT = {"kl": "mean KL(unquantized || quantized) of the output distribution per position, only this cache quantized",
              "loss": "calibration loss increase with only this cache quantized (clipped at 0)",
              "attention": "relative error of this layer's attention output, sum||o_q - o||^2 / sum||o||^2"}


def _output_module(model, mods: dict) -> str:
    """Name of the model's output module (`lm_head`): the one whose output the KL compares."""
    get = getattr(model, "get_output_embeddings", None)
    out = get() if get is not None else None
    for name, m in mods.items():
        if m is out and name:
            return name
    raise bad("kv score", "kl", f"needs a model with an output module (get_output_embeddings), not {type(model).__name__}; "
              "use score=loss or attention")


def _kl_hook(base: list, acc: list):
    """Hook accumulating Σ KL(softmax(base) || softmax(out)) over output positions, batch by batch."""
    import torch

    calls = iter(range(len(base)))

    def hook(mod, inp, res):
        ref = torch.log_softmax(_first(base[next(calls)]).double(), -1)
        out = torch.log_softmax(_first(res).detach().double(), -1)
        acc[0] += float((ref.exp() * (ref - out)).sum())
        acc[1] += ref[..., 0].numel()
    return hook


class _capture:
    """Context: forward hooks appending each named module's output (detached) to out[name]."""

    def __init__(self, mods: dict, names: list[str], out: dict):
        self.mods, self.names, self.out, self.handles = mods, names, out, []

    def __enter__(self):
        for n in self.names:
            self.handles.append(self.mods[n].register_forward_hook(
                lambda mod, inp, res, n=n: self.out[n].append(_detach(res))))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _error_hook(base: list, errs: list, stop: bool):
    """Hook accumulating ||o_q − o||² and ||o||² against the base outputs, batch by batch."""
    calls = iter(range(len(base)))

    def hook(mod, inp, res):
        o = _first(base[next(calls)]).double()
        d = _first(res).detach().double() - o
        errs[0] += float((d * d).sum())
        errs[1] += float((o * o).sum())
        if stop:
            raise _Stop
    return hook


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _blocks(units: list[Unit]) -> list[str]:
    """Distinct parent modules (decoder blocks) of the units' attention layers, in order."""
    return list(dict.fromkeys(_parent(u.layer) for u in units))


def _replay(outputs: list):
    """A forward that returns the recorded outputs, one per call, in order."""
    it = iter(outputs)

    def forward(*args, **kwargs):
        return next(it)
    return forward


def _detach(res):
    if isinstance(res, tuple):
        return tuple(_detach(r) for r in res)
    return res.detach() if hasattr(res, "detach") else res


def _first(res):
    return res[0] if isinstance(res, tuple) else res

