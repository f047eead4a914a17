"""Sequential apply (GPTQ's order): layers quantized in forward order, each from the Hessian of
its inputs in the model whose earlier layers are already quantized.

Stages: layers that receive the very same input tensor (a block's q/k/v projections, gate/up)
form one stage; they share one Hessian H = 2/n · Σ x xᵀ (float32, on the layer's device) and are
quantized together (their rows stacked: GPTQ treats rows independently given H).

Runs: for a decoder/encoder stack (the `nn.ModuleList` holding most of the layers) the inputs of
block 0 are captured once per calibration batch; each stage then replays only its block, and the
block's output with its layers quantized becomes the next block's input (GPTQ's reference code
does the same). The replay is checked once against the full model (block 0's output must equal
block 1's input); if it differs, or for a model without such a stack (a CNN), every stage runs
the whole model forward on the calibration batches, stopping as soon as the stage's inputs are
seen. Cost: about one forward pass over the calibration set per block plus one per stage outside
the stack.
"""
from __future__ import annotations

import numpy as np

from bitalloc.errors import BitallocError

CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


class _Stop(Exception):
    """Raised inside a forward pass once the inputs it was run for have been seen."""


def layer_rows(mod, x):
    """(rows, in_features·kh·kw) float32 inputs a layer multiplies by its 2-D weight (conv inputs
    unfolded into patches)."""
    import torch.nn as nn
    import torch.nn.functional as F

    x = x.detach().float()
    if isinstance(mod, nn.Conv2d):
        x = F.unfold(x, mod.kernel_size, mod.dilation, mod.padding, mod.stride).transpose(1, 2)
    elif isinstance(mod, nn.Conv1d):
        x = F.unfold(x.unsqueeze(2), (1, mod.kernel_size[0]), (1, mod.dilation[0]), (0, mod.padding[0]),
                     (1, mod.stride[0])).transpose(1, 2)
    return x.reshape(-1, x.shape[-1])


def run_forward(model, batch, forward=None):
    if forward is not None:
        return forward(model, batch)
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)


class Plan:
    """order: the layers in forward order; stages: lists of layers sharing one input; blocks: the
    stack's blocks (or None) and block_of: layer → block index."""

    def __init__(self, model, layers: list[str], calib, forward):
        import torch

        mods = dict(model.named_modules())
        first, same_as_prev, calls = {}, {}, {n: 0 for n in layers}
        prev = [None, None]

        def hook(mod, args, name):
            x = args[0]
            calls[name] += 1
            if name not in first:
                first[name] = len(first)
                same_as_prev[name] = x is prev[0] and prev[1] is not None
            prev[0], prev[1] = x, name

        self.blocks, self.block_of = _stack(model, layers)
        handles = [mods[n].register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n in layers]
        seen_blocks: dict[int, tuple] = {}
        if self.blocks is not None:
            for i in (0, 1):
                handles.append(self.blocks[i].register_forward_pre_hook(
                    lambda m, a, k, i=i: seen_blocks.setdefault(i, (a, dict(k))), with_kwargs=True))
        try:
            with torch.no_grad():
                run_forward(model, calib[0], forward)
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in layers if n not in first]
        if missing:
            raise BitallocError(f"calibration: layer {missing[0]!r} saw no inputs (does forward() run it?)")
        self.order = sorted(layers, key=first.get)
        self.single = all(c == calls[self.order[0]] for c in calls.values()) and calls[self.order[0]] == 1
        self.stages: list[list[str]] = []
        for n in self.order:
            if self.stages and same_as_prev[n] and self._segment(n) == self._segment(self.stages[-1][0]):
                self.stages[-1].append(n)
            else:
                self.stages.append([n])
        if self.blocks is not None and not self._replay_ok(seen_blocks):
            self.blocks, self.block_of = None, {}
        if self.blocks is not None:  # blocks must come in one run, in order, between the outside layers
            segs = [self._segment(s[0]) for s in self.stages]
            inner = [s for s in segs if s is not None]
            if inner != sorted(inner) or any(s is None for s in segs[segs.index(inner[0]):len(segs) - segs[::-1].index(inner[-1])]):
                self.blocks, self.block_of = None, {}

    def _segment(self, layer):
        return self.block_of.get(layer)

    def _replay_ok(self, seen) -> bool:
        """Block 0 replayed alone gives block 1's input (the stack is a plain chain)."""
        import torch

        if 0 not in seen or 1 not in seen:
            return False
        try:
            with torch.no_grad():
                out = _hidden(self.blocks[0](*seen[0][0], **_no_cache(seen[0][1])))
            want = _args_hidden(*seen[1])
            return out.shape == want.shape and bool(torch.allclose(out, want, rtol=1e-4, atol=1e-5))
        except Exception:  # noqa: BLE001 - any failure means: replay the whole model instead
            return False


def _stack(model, layers):
    """The nn.ModuleList whose children hold the most of `layers` (at least two children with some)."""
    import torch.nn as nn

    best, best_map = None, {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) < 2:
            continue
        pre = f"{name}." if name else ""
        m = {}
        for n in layers:
            if n.startswith(pre):
                head = n[len(pre):].split(".")[0]
                if head.isdigit():
                    m[n] = int(head)
        if len(set(m.values())) >= 2 and len(m) > len(best_map):
            best, best_map = mod, m
    return best, best_map


def _no_cache(kwargs):
    k = dict(kwargs)
    for key in CACHE_KWARGS:
        if key in k:
            k[key] = None
    if "use_cache" in k:
        k["use_cache"] = False
    return k


def _hidden(out):
    if isinstance(out, (tuple, list)):
        return out[0]
    return getattr(out, "last_hidden_state", out)


def _args_hidden(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, h):
    if args:
        return (h, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


class Runner:
    """Runs the calibration batches through the whole model, or through one block of the stack."""

    def __init__(self, model, calib, forward):
        self.model, self.calib, self.forward = model, calib, forward
        self.states = None  # per batch: (args, kwargs) of the current block

    def enter_stack(self, block0):
        import torch

        states = []

        def grab(m, a, k):
            states.append((a, _no_cache(k)))
            raise _Stop

        h = block0.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad():
                for batch in self.calib:
                    try:
                        run_forward(self.model, batch, self.forward)
                    except _Stop:
                        pass
        finally:
            h.remove()
        self.states = states

    def advance(self, block):
        """The block's outputs (its layers now quantized) become the next block's inputs."""
        import torch

        with torch.no_grad():
            self.states = [_with_hidden(a, k, _hidden(block(*a, **k))) for a, k in self.states]

    def run(self, block=None):
        """One pass over the calibration batches (through `block` when given); hooks raise _Stop."""
        import torch

        with torch.no_grad():
            if block is None:
                for batch in self.calib:
                    try:
                        run_forward(self.model, batch, self.forward)
                    except _Stop:
                        pass
            else:
                for a, k in self.states:
                    try:
                        block(*a, **k)
                    except _Stop:
                        pass


def stage_hessian(model, stage: list[str], runner: Runner, block=None, stop: bool = True):
    """H = 2/n Σ x xᵀ (float32, on the layer's device) of the stage's shared input."""
    import torch

    mods = dict(model.named_modules())
    lead = mods[stage[0]]
    acc = {"H": None, "n": 0}

    def hook(mod, args):
        x = layer_rows(mod, args[0])
        xx = x.T @ x
        acc["H"] = xx if acc["H"] is None else acc["H"] + xx
        acc["n"] += len(x)
        if stop:
            raise _Stop

    h = lead.register_forward_pre_hook(hook)
    try:
        runner.run(block)
    finally:
        h.remove()
    if not acc["n"]:
        raise BitallocError(f"calibration: layer {stage[0]!r} saw no inputs (does forward() run it?)")
    return acc["H"] * (2.0 / acc["n"]), acc["n"]


def layer_hessians(model, layers: list[str], calib, forward=None) -> dict:
    """layer → 2/n Σ x xᵀ (float32, on the layer's device) over the calibration batches, from one
    pass of the model as it is (memory: Σ in_features² · 4 bytes)."""
    import torch

    mods = dict(model.named_modules())
    acc = {n: [None, 0] for n in layers}

    def hook(mod, args, name):
        x = layer_rows(mod, args[0])
        a = acc[name]
        a[0] = x.T @ x if a[0] is None else a[0] + x.T @ x
        a[1] += len(x)

    handles = [mods[n].register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n in layers]
    try:
        with torch.no_grad():
            for batch in calib:
                run_forward(model, batch, forward)
    finally:
        for h in handles:
            h.remove()
    for n, (H, k) in acc.items():
        if not k:
            raise BitallocError(f"calibration: layer {n!r} saw no inputs (does forward() run it?)")
    return {n: H * (2.0 / k) for n, (H, k) in acc.items()}


def sequential_codes(model, steps, wq, settings, calib, forward=None, progress=None):
    """UnitCodes of every step, quantized stage by stage in forward order; each stage's layers are
    written into `model` (decoded from their codes) before the next stage's inputs are captured."""
    import torch

    from bitalloc.apply.encode import encode_unit
    from bitalloc.quant.codec import write_weights
    from bitalloc.quant.quantizers.gptq import Cell

    mods = dict(model.named_modules())
    by_layer: dict[str, list] = {}
    for step in steps:
        by_layer.setdefault(step[0].layer, []).append(step)
    plan = Plan(model, list(by_layer), calib, forward)
    runner = Runner(model, calib, forward)
    codes_of: dict[str, list] = {}
    done = 0
    last_block = None
    for stage in plan.stages:
        b = plan.block_of.get(stage[0])
        block = None
        if b is not None:
            if runner.states is None:
                runner.enter_stack(plan.blocks[b])
            elif b != last_block:
                for j in range(last_block, b):
                    runner.advance(plan.blocks[j])
            block, last_block = plan.blocks[b], b
        elif last_block is not None:  # after the stack: run the whole model again
            runner.states = None
        H, _ = stage_hessian(model, stage, runner, block, stop=plan.single)
        # the stage's layers stacked along rows: one GPTQ run (rows are independent given H)
        Ws, cells, spans, r = [], [], [], 0
        for name in stage:
            w = mods[name].weight.detach()
            w = w.reshape(w.shape[0], -1)
            for u, bits, fmt, quant in by_layer[name]:
                rows = (r + u.index[0], r + u.index[1]) if u.axis == 0 else (r, r + w.shape[0])
                cells.append(Cell(rows, tuple(u.index) if u.axis == 1 else None, quant))
            spans.append((r, r + w.shape[0]))
            Ws.append(w)
            r += w.shape[0]
        w_hat, outs = wq.quantize_layer(torch.cat(Ws) if len(Ws) > 1 else Ws[0], cells, H)
        k = 0
        for name, (r0, r1) in zip(stage, spans):
            layer_codes = []
            for u, bits, fmt, quant in by_layer[name]:
                layer_codes.append(encode_unit(u, bits, fmt, quant, u.block(w_hat[r0:r1]), wq, encoded=outs[k]))
                k += 1
                done += 1
                if progress is not None:
                    progress(done, len(steps))
            write_weights(model, layer_codes, settings.to_json())
            codes_of[name] = layer_codes
        del H
    return [c for name in by_layer for c in codes_of[name]]
