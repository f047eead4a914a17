"""AttnLRP for decoder LLMs (Achtibat et al., ICML 2024), as gradient × input with modified gradients.

Relevance R of a tensor x is x ⊙ g, where g is the gradient of the explained output under these
rules; every rule is a forward hook on a module *instance*, removed afterwards (no class or
transformers function is patched, so other models in the process are untouched):

- Linear layers: LRP-0 (plain gradient × input; no bias in these models, so nothing is absorbed).
- Attention: the softmax gets its true gradient, which is AttnLRP's softmax rule
  (R_in = x ⊙ (g − s Σ s g)); the uniform rule on the two matmuls scales the gradient at the
  projections: value ×1/2 (A·V), query and key ×1/4 each (QKᵀ, after A·V's half). Rotary
  embeddings and head reshapes are linear, so scaling at the projection output is the same as
  scaling where the matmul reads the tensor. Fused projections (`qkv_proj`) are scaled per slice.
- RMSNorm / LayerNorm and element-wise activations: identity rule (R_in = R_out), i.e. the
  gradient is replaced by out / in ⊙ g (for a norm this is AttnLRP's "normalizer held constant").
- Gated MLP, act(gate) ⊙ up: the uniform (product) rule, ×1/2 on both factors, applied at the gate
  and up projections' outputs (or the fused `gate_up_proj`).
- Residual adds: conserved by gradient × input (each summand gets x_i ⊙ g, summing to the output's).

What is explained: the sum over positions of the logit of the true next token (the causal LM's
own calibration objective), whose relevance at the last hidden state is h ⊙ W_head[token].
Conservation = Σ input-embedding relevance ÷ Σ explained logits; the softmax rule's bias term
(x ⊙ s Σ s g) absorbs part of the relevance, so it is below 1 by what attention absorbs.

Families: every model whose attention blocks have q/k/v (or fused qkv) projections and an output
projection, and whose MLP is gated (gate/up/down, or fused gate_up) or plain (up/down with an
activation module): Llama, Qwen2/3, Mistral, Gemma, Phi-3 and their relatives.
"""
from __future__ import annotations

import re

import torch

from bitalloc.errors import BitallocError

QUERY, KEY, VALUE = ("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")
FUSED_QKV = ("qkv_proj",)
OUT = ("o_proj", "out_proj", "dense")
GATE, UP, FUSED_GATE_UP = ("gate_proj", "w1"), ("up_proj", "w3"), ("gate_up_proj",)
NORM = re.compile(r"(RMS|Layer)Norm", re.I)
FAMILIES = "Llama, Qwen2/3, Mistral, Gemma, Phi-3 (attention with q/k/v or qkv projections, gated or plain MLPs)"


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times `factor` (a scalar or a tensor broadcast on the last dim)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


class _IdentityRule(torch.autograd.Function):
    """y = fn(x) with the gradient y / x ⊙ g, so that x ⊙ g_x = y ⊙ g_y (relevance passes unchanged)."""

    @staticmethod
    def forward(ctx, x, y, eps):
        ctx.save_for_backward(y / _stabilize(x, eps))
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        (ratio,) = ctx.saved_tensors
        return ratio * g, None, None


def _stabilize(x, eps):
    return x + eps * torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _children(module) -> dict:
    return dict(module.named_children())


class DecoderRules:
    """The AttnLRP rules on one decoder model, as forward hooks (`with DecoderRules(model, record):`).

    record(name, output, gradient) is called in the backward pass for every module named in
    `recorded`, with the module's output and the (rule-modified) gradient reaching it; the
    relevance at the output is output ⊙ gradient. `rules` says which rule each part got.
    `absorbed` accumulates what the softmax rule absorbs over all passes: per attention block,
    R(output projection) − R(query) − R(key) − R(value), so Σ input relevance + absorbed = Σ f.
    """

    def __init__(self, model, recorded, record, eps: float = 1e-6):
        self.model, self.recorded, self.record, self.eps = model, set(recorded), record, float(eps)
        self.rules: dict[str, str] = {}
        self._handles = []
        self._sign: dict[str, float] = {}  # attention projection → +1 (output) / −1 (q, k, v) in `absorbed`
        self.absorbed = 0.0
        self.factors = self._factors()

    # -- which rule goes where --
    def _factors(self) -> dict:
        """module name → gradient factor (float, or a per-output-column tensor for fused projections)."""
        factors, attention, mlp = {}, 0, 0
        for name, mod in self.model.named_modules():
            kids = _children(mod)
            prefix = f"{name}." if name else ""
            names = set(kids)
            q, k, v = (next((n for n in c if n in names), None) for c in (QUERY, KEY, VALUE))
            o = next((n for n in OUT if n in names), None)
            if q and k and v:
                factors.update({prefix + q: 0.25, prefix + k: 0.25, prefix + v: 0.5})
                self._sign.update({prefix + q: -1.0, prefix + k: -1.0, prefix + v: -1.0})
                attention += 1
            elif any(n in names for n in FUSED_QKV):
                fused = next(n for n in FUSED_QKV if n in names)
                factors[prefix + fused] = self._qkv_factor(mod, kids[fused])
                self._sign[prefix + fused] = -1.0
                attention += 1
            else:
                o = None
            if o:
                self._sign[prefix + o] = 1.0
            gate, up = (next((n for n in c if n in names), None) for c in (GATE, UP))
            if gate and up:
                factors.update({prefix + gate: 0.5, prefix + up: 0.5})
                mlp += 1
            elif any(n in names for n in FUSED_GATE_UP):
                factors[prefix + next(n for n in FUSED_GATE_UP if n in names)] = 0.5
                mlp += 1
        if not attention:
            cls = type(self.model).__name__
            raise BitallocError(f"estimator 'lrp': model {cls} has no AttnLRP rules: no attention block with "
                                f"q/k/v (or qkv) projections found; supported: {FAMILIES}")
        self.rules["attention"] = (f"{attention} blocks: softmax rule (true gradient), uniform rule: value x1/2, "
                                   "query and key x1/4 each")
        self.rules["mlp"] = f"{mlp} gated blocks: product rule x1/2 on gate and up" if mlp else "no gated MLP"
        return factors

    @staticmethod
    def _qkv_factor(attn, proj):
        """Per-output-column factors of a fused qkv projection: [q: 1/4 | k: 1/4 | v: 1/2]."""
        cfg = getattr(attn, "config", None)
        head = getattr(attn, "head_dim", None)
        n_q = getattr(cfg, "num_attention_heads", None) if cfg is not None else None
        n_kv = getattr(cfg, "num_key_value_heads", n_q) if cfg is not None else None
        out = proj.weight.shape[0]
        if not (head and n_q and n_kv) or (n_q + 2 * n_kv) * head != out:
            raise BitallocError(f"estimator 'lrp': cannot split the fused qkv projection ({out} outputs) into "
                                "query, key and value (head_dim / num_attention_heads / num_key_value_heads)")
        f = torch.full((out,), 0.25, dtype=proj.weight.dtype, device=proj.weight.device)
        f[(n_q + n_kv) * head:] = 0.5
        return f

    def _is_identity_rule(self, name, mod) -> bool:
        if NORM.search(type(mod).__name__):
            return True
        if name.rsplit(".", 1)[-1] in ("act_fn", "act", "activation_fn"):
            return isinstance(mod, torch.nn.Module) and not list(mod.parameters())
        return False

    # -- hooks --
    def __enter__(self):
        for name, mod in self.model.named_modules():
            if name in self.factors or name in self.recorded or name in self._sign:
                self._handles.append(mod.register_forward_hook(self._linear_hook(name)))
            elif self._is_identity_rule(name, mod):
                self._handles.append(mod.register_forward_hook(self._identity_hook()))
                kind = "norm" if NORM.search(type(mod).__name__) else "activation"
                self.rules.setdefault(f"{kind} {type(mod).__name__}", "identity rule")
        self.rules.setdefault("linear", "LRP-0 (gradient x input)")
        self.rules.setdefault("residual", "conserved (gradient x input on the sum)")
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _linear_hook(self, name):
        factor, sign = self.factors.get(name), self._sign.get(name)
        recorded = name in self.recorded

        def on_grad(g, out):
            if recorded:
                self.record(name, out, g)
            if sign is not None:
                self.absorbed += sign * float((out.double() * g.double()).sum())

        def hook(mod, inputs, out):
            if not torch.is_tensor(out) or not out.requires_grad:
                return None
            out.register_hook(lambda g, out=out.detach(): on_grad(g, out))
            return None if factor is None else _ScaleGrad.apply(out, factor)
        return hook

    def _identity_hook(self):
        eps = self.eps

        def hook(mod, inputs, out):
            x = inputs[0] if inputs else None
            if not (torch.is_tensor(out) and torch.is_tensor(x) and out.shape == x.shape and x.requires_grad):
                return None
            return _IdentityRule.apply(x, out.detach(), eps)
        return hook


def lm_batch(batch) -> dict:
    """Model inputs of a causal-LM calibration batch: a (B, T) token tensor or a dict with input_ids."""
    if torch.is_tensor(batch):
        return {"input_ids": batch}
    return {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}


def explain_lm(model, batch, rules: DecoderRules):
    """One AttnLRP pass on a causal LM: returns (explained f per sample, input relevance per sample),
    both float64 numpy (B,). f = Σ_t logit[t, token[t+1]] over the positions the mask keeps."""
    kw = lm_batch(batch)
    ids = kw["input_ids"]
    emb = model.get_input_embeddings()
    leaf = []

    def make_leaf(module, inputs, output):
        out = output.detach().requires_grad_(True)
        leaf.append(out)
        return out
    handle = emb.register_forward_hook(make_leaf)
    try:
        with rules:
            logits = model(**kw, use_cache=False).logits  # (B, T, V)
            target = ids[:, 1:]
            keep = torch.ones_like(target, dtype=logits.dtype)
            if "attention_mask" in kw:
                keep = (kw["attention_mask"][:, 1:] * kw["attention_mask"][:, :-1]).to(logits.dtype)
            picked = logits[:, :-1].gather(-1, target.unsqueeze(-1)).squeeze(-1) * keep  # (B, T-1)
            seed = torch.zeros_like(logits)
            seed[:, :-1].scatter_(-1, target.unsqueeze(-1), keep.unsqueeze(-1))
            (g,) = torch.autograd.grad(logits, leaf[0], grad_outputs=seed)
    finally:
        handle.remove()
    r_in = (leaf[0].detach().double() * g.double()).sum((1, 2))
    return picked.detach().double().sum(1).cpu().numpy(), r_in.cpu().numpy()
