"""`lrp` (LRP-QViT): each layer's share of the explanation weights its relative quantization noise.

Relevance comes from Layer-wise Relevance Propagation with the `zennit` library, one forward and
one modified backward pass per calibration batch:

- What is explained: a classifier's logit of the true class (`target="true"`, default) or of the
  predicted class (`target="pred"`); a sentence encoder's cosine to its unquantized embedding,
  f = <e(x), t> with e = L2-normalized mean pooling and t = batch["target"] (the L2 norm is held
  constant, as the LN-rule holds LayerNorm's std constant, so f is linear in the last hidden state
  and its relevance there is h_{t,d} m_t t_d / (Σ m · ||mean||), summing to f).
- CNNs: a zennit composite (default `epsilon_plus_flat`: Flat on the first conv, z+ on the other
  convs, ε on linears, Pass on activations; `epsilon_gamma_box` uses the calibration inputs' range
  as its box; batch norms are merged by zennit's SequentialMergeBatchNorm canonizer).
- BERT-style encoders (MiniLM), the rules transformer LRP needs to conserve relevance (Ali et al.
  2022, "XAI for Transformers: Better Explanations through Conservative Propagation"; AttnLRP,
  Achtibat et al. 2024): ε-rule on every Linear; LN-rule on LayerNorm (a canonizer makes its std a
  constant, then zennit's Norm rule is LRP-0 on the remaining linear map); residual adds split by a
  canonizer that routes them through zennit's `Sum` layer (Norm rule: each summand gets its share of
  the sum); GELU by `Pass` (identity rule). Attention `cp` (default, CP-LRP): the relevance flow
  treats the softmax as detached, so the attention matrix A is a constant and A·V is propagated by
  LRP-0 (gradient × input between the value and the output projection; conservative). CP-LRP
  gives query/key no relevance, yet quantizing them changes A; so their relevance is read where
  AttnLRP puts it (softmax rule, uniform rule: 1/4 of gradient × input at each projection's
  output), recorded only and not propagated, which leaves the CP flow and its conservation as they
  are. `attnlrp`: AttnLRP throughout (softmax rule, uniform rule on both matmuls: value 1/2, query
  and key 1/4 each); the softmax absorbs relevance (about 0.6 of f reaches MiniLM's input).

Contribution (LRP-QViT) of output channel o of layer l: C_{l,o} = Σ_{samples, positions} |R_{l,o}|,
the relevance at the layer's output, normalized so Σ_l Σ_o C_{l,o} = 1 (a floor of 1e-6 × the
layer's mean keeps every weight positive). Score of unit n at candidate k:

    S[n, k] = Σ_{(o, i) ∈ n} C_{l,o} · (Q_k(W)_{oi} − W_{oi})² / ||W_{o,:}||²

so a whole layer scores Σ_o C_{l,o} · ||Q_k(W_o) − W_o||² / ||W_o||² (`channel_relevance=False`:
C_l · ||Q_k(W) − W||² / ||W||²). Why: LRP-ε relevance of a neuron is ≈ z_o ∂f/∂z_o, so a relative
perturbation δ_o of its pre-activation changes f by ≈ R_o δ_o; quantizing row o adds ΔW_o x to
z_o = W_o x, a relative perturbation whose power is ||ΔW_o||²/||W_o||² for inputs not aligned with
the error. Relevance says how much of the explanation flows through the channel, the relative
noise how much of that flow is corrupted. Scores are dimensionless shares, comparable across units
of one profile (not to loss units of other estimators).

zennit imports torchvision at import time (only for its ResNet canonizer). Without torchvision,
`load_zennit` registers a stand-in `torchvision.models.resnet` (placeholder Bottleneck/BasicBlock
classes that match no module) while zennit imports, then removes it again from sys.modules, so
`import torchvision` elsewhere still fails as before and `import zennit` later finds the loaded
module. Install zennit with `pip install --no-deps zennit` (it needs only torch, numpy and Pillow).
"""
from __future__ import annotations

import inspect
import sys
import time
import types
from dataclasses import dataclass

import numpy as np

from bitalloc.errors import BitallocError, bad
from bitalloc.profile import Profile
from bitalloc.sensitivity import register
from bitalloc.sensitivity.base import DEFAULT_BITS, Estimator, weighted_error

ZENNIT_INSTALL = "pip install --no-deps zennit"
_STAND_IN = ("torchvision", "torchvision.models", "torchvision.models.resnet")
ZENNIT_TORCHVISION = ""  # "real" or "stand-in": how zennit's torchvision import was satisfied


def load_zennit():
    """Import zennit and return it; without a working torchvision, through a temporary stand-in."""
    global ZENNIT_TORCHVISION
    if "zennit.composites" in sys.modules and "zennit.torchvision" in sys.modules:
        import zennit

        ZENNIT_TORCHVISION = ZENNIT_TORCHVISION or "real"
        return zennit
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck  # noqa: F401

        ZENNIT_TORCHVISION = "real"
        added = []
    except Exception:  # absent, or present and broken against this torch
        ZENNIT_TORCHVISION = "stand-in"
        added = _add_stand_in()
    try:
        import zennit
        import zennit.canonizers
        import zennit.composites
        import zennit.core
        import zennit.layer
        import zennit.rules
        import zennit.types
    except ImportError as e:
        raise BitallocError(f"estimator 'lrp': cannot import zennit ({e}); install it with {ZENNIT_INSTALL}") from None
    finally:
        for name in added:
            if getattr(sys.modules.get(name), "__bitalloc_stand_in__", False):
                del sys.modules[name]
    return zennit


def _add_stand_in() -> list[str]:
    """Register placeholder torchvision modules that are missing; returns the names added."""
    import importlib.machinery

    import torch

    class Bottleneck(torch.nn.Module):
        """Placeholder for torchvision's ResNet block: never instantiated, matches no module."""

    class BasicBlock(torch.nn.Module):
        """Placeholder for torchvision's ResNet block: never instantiated, matches no module."""

    added = []
    for name in _STAND_IN:
        if name in sys.modules:
            continue
        mod = types.ModuleType(name, "bitalloc stand-in so that zennit imports without torchvision")
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
        mod.__bitalloc_stand_in__ = True
        sys.modules[name] = mod
        added.append(name)
    resnet = sys.modules["torchvision.models.resnet"]
    if getattr(resnet, "__bitalloc_stand_in__", False):
        resnet.Bottleneck, resnet.BasicBlock = Bottleneck, BasicBlock
    for parent, child in (("torchvision", "models"), ("torchvision.models", "resnet")):
        if getattr(sys.modules[parent], "__bitalloc_stand_in__", False):
            setattr(sys.modules[parent], child, sys.modules[f"{parent}.{child}"])
    return added


zennit = load_zennit()
import torch  # noqa: E402
from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import COMPOSITES  # noqa: E402
from zennit.core import Composite, Hook, stabilize  # noqa: E402
from zennit.layer import Sum  # noqa: E402
from zennit.rules import Epsilon, Norm, Pass  # noqa: E402
from zennit.types import Activation  # noqa: E402

CNN_COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_plus", "epsilon_alpha2_beta1",
                  "epsilon_alpha2_beta1_flat")
ATTENTION = ("auto", "cp", "attnlrp")
ATTENTION_TEXT = {"auto": "cp for encoders, attnlrp for decoder LLMs",
                  "cp": "CP-LRP, softmax detached for the relevance flow, A.V by LRP-0; query/key relevance "
                        "by AttnLRP's softmax and uniform rules (1/4 each), recorded and not propagated",
                  "attnlrp": "AttnLRP, softmax rule, uniform rule on QK^T and A.V (value 1/2, query and key 1/4)"}
TARGETS = ("true", "pred")


# ---- relevance bookkeeping ----------------------------------------------------------------
class _Store:
    """Σ |R| per output channel at each recorded layer's output (float64, summed over batches)."""

    def __init__(self, channel_dim: dict[str, int]):
        self.channel_dim = channel_dim
        self.abs: dict[str, np.ndarray] = {}

    def add(self, name: str, R):
        d = self.channel_dim[name] % R.ndim
        a = R.detach().abs().double().movedim(d, -1).reshape(-1, R.shape[d]).sum(0).cpu().numpy()
        self.abs[name] = self.abs.get(name, 0.0) + a


class _Layer(Hook):
    """zennit hook on one Linear/Conv: runs its zennit `rule`, records the relevance at the layer's
    output, and converts at the edges of attention, where gradient × input is propagated:
    grad_in > 0: the signal arriving at the output is a gradient g, the relevance is grad_in · z ⊙ g
    (grad_in = 1/2 or 1/4 is AttnLRP's uniform rule); to_grad: the relevance returned for the input x
    is handed on as the gradient R / x; sink: the relevance is recorded and not propagated further
    (query/key under CP-LRP, whose softmax is detached for the relevance flow)."""

    def __init__(self, rule, name: str, store: _Store | None, grad_in: float = 0.0, to_grad: bool = False,
                 sink: bool = False, eps: float = 1e-6):
        super().__init__()
        self.rule, self.name, self.store = rule, name, store
        self.grad_in, self.to_grad, self.sink, self.eps = grad_in, to_grad, sink, eps

    def copy(self):
        return _Layer(self.rule.copy(), self.name, self.store, self.grad_in, self.to_grad, self.sink, self.eps)

    def forward(self, module, input, output):
        self.rule.forward(module, input, output)
        if self.grad_in:
            self.stored_tensors["output"] = output.detach()

    def backward(self, module, grad_input, grad_output):
        R = grad_output[0]
        if self.grad_in:
            R = self.grad_in * self.stored_tensors["output"] * R
        if self.store is not None:
            self.store.add(self.name, R)
        if self.sink:
            return tuple(None if g is None else torch.zeros_like(g) for g in grad_input)
        out = self.rule.backward(module, grad_input, (R,))
        if self.to_grad:
            x = self.rule.stored_tensors["input"][0]
            out = tuple(None if r is None else r / stabilize(x, self.eps) for r in out)
        return out

    def remove(self):
        super().remove()
        self.rule.remove()


class _ListingCanonizer(AttributeCanonizer):
    """zennit's AttributeCanonizer, listing the modules before changing any (it may add children)."""

    def apply(self, root_module):
        instances = []
        for name, module in list(root_module.named_modules()):
            attributes = self.attribute_map(name, module)
            if attributes is not None:
                instance = _ListingCanonizer(self.attribute_map)
                instance.register(module, attributes)
                instances.append(instance)
        return instances

    def copy(self):
        return _ListingCanonizer(self.attribute_map)


def _layer_norm_map(name, module):
    """LN-rule canonizer: LayerNorm with its standard deviation detached (a linear map of x)."""
    if not isinstance(module, torch.nn.LayerNorm) or "forward" in vars(module):
        return None
    dims = tuple(range(-len(module.normalized_shape), 0))

    def forward(x):
        mean = x.mean(dims, keepdim=True)
        std = ((x - mean).pow(2).mean(dims, keepdim=True) + module.eps).sqrt().detach()
        y = (x - mean) / std
        if module.weight is not None:
            y = y * module.weight
        if module.bias is not None:
            y = y + module.bias
        return y
    return {"forward": forward}


def _residual_map(name, module):
    """Residual canonizer for BERT-style `*Output` blocks, LayerNorm(dropout(dense(h)) + input):
    the add goes through zennit's `Sum` layer so its Norm rule splits the relevance."""
    if not _is_residual_block(module) or "forward" in vars(module):
        return None

    def forward(hidden_states, input_tensor):
        h = module.dropout(module.dense(hidden_states))
        return module.LayerNorm(module.bitalloc_residual(torch.stack([h, input_tensor], dim=-1)))
    return {"forward": forward, "bitalloc_residual": Sum(dim=-1)}


def _is_residual_block(module) -> bool:
    if not (type(module).__name__.endswith("Output") and isinstance(getattr(module, "dense", None), torch.nn.Linear)
            and isinstance(getattr(module, "LayerNorm", None), torch.nn.LayerNorm) and hasattr(module, "dropout")):
        return False
    return list(inspect.signature(module.forward).parameters)[:2] == ["hidden_states", "input_tensor"]


def _is_activation(module) -> bool:
    return isinstance(module, Activation) or type(module).__module__.startswith("transformers.activations")


def _attention_blocks(model) -> list[dict]:
    """Self-attention blocks: names of the query, key, value and output projections."""
    mods = dict(model.named_modules())
    blocks = []
    for name, m in mods.items():
        kids = dict(m.named_children())
        prefix = f"{name}." if name else ""
        if all(isinstance(kids.get(k), torch.nn.Linear) for k in ("query", "key", "value")):
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            out, qkv = (f"{parent}.output.dense" if parent else "output.dense"), ("query", "key", "value")
        elif all(isinstance(kids.get(k), torch.nn.Linear) for k in ("q_proj", "k_proj", "v_proj", "o_proj")):
            out, qkv = f"{prefix}o_proj", ("q_proj", "k_proj", "v_proj")
        else:
            continue
        if out not in mods:
            raise BitallocError(f"estimator 'lrp': attention block {name!r} has no output projection {out!r}")
        q, k, v = (f"{prefix}{s}" for s in qkv)
        blocks.append({"q": q, "k": k, "v": v, "o": out})
    return blocks


# ---- the estimator ------------------------------------------------------------------------
@dataclass
class Relevance:
    """What one LRP run over the calibration set found. channels: layer → Σ|R| per output channel
    at the layer's output (raw); explained: per sample, the explained output f; input_sum: per
    sample, the relevance that reached the input (the encoder input for transformers); rules:
    layer (or module type) → rule; batches: forward + LRP backward passes."""

    channels: dict[str, np.ndarray]
    explained: np.ndarray
    input_sum: np.ndarray
    rules: dict[str, str]
    batches: int
    absorbed: float | None = None  # AttnLRP on decoders: relevance the softmax rule absorbed (Σ over samples)

    @property
    def conservation(self) -> float:
        """Σ input relevance / Σ explained output (1 when relevance is conserved)."""
        return float(self.input_sum.sum() / self.explained.sum())

    @property
    def conservation_with_absorbed(self) -> float | None:
        """(Σ input relevance + what attention absorbed) / Σ explained output: 1 up to rounding when every
        rule but the softmax rule conserves relevance (decoders only)."""
        if self.absorbed is None:
            return None
        return float((self.input_sum.sum() + self.absorbed) / self.explained.sum())


@register("lrp")
class LrpEstimator(Estimator):
    """composite: zennit composite for CNNs (CNN_COMPOSITES); attention: `cp` (CP-LRP, detached
    softmax) or `attnlrp` for transformers; epsilon: stabilizer of the ε-rule (and of LRP-0 on
    LayerNorm, residual sums and attention); target: `true` or `pred` class for classifiers;
    channel_relevance: weight each output row by its own relevance (else one scalar per layer).
    After `estimate`, `last_relevance` holds the Relevance it used (conservation per sample, rules)."""

    passes = "1 forward + 1 LRP backward per calibration batch"

    def __init__(self, bits=DEFAULT_BITS, granularity: str = "layer", group_size: int = 128, symmetric: bool = False,
                 zero: str = "int", composite: str = "epsilon_plus_flat", attention: str = "auto",
                 epsilon: float = 1e-6, target: str = "true", channel_relevance: bool = True):
        super().__init__(bits, granularity, group_size, symmetric, zero)
        if composite not in CNN_COMPOSITES:
            raise bad("composite", composite, f"allowed: {', '.join(CNN_COMPOSITES)}")
        if attention not in ATTENTION:
            raise bad("attention", attention, f"allowed: {', '.join(ATTENTION)}")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < 1:
            raise bad("epsilon", epsilon, "must be a number in (0, 1)")
        if target not in TARGETS:
            raise bad("target", target, f"allowed: {', '.join(TARGETS)}")
        self.composite, self.attention, self.epsilon = composite, attention, float(epsilon)
        self.target, self.channel_relevance = target, bool(channel_relevance)
        self.last_relevance: Relevance | None = None

    # -- public steps --
    def estimate(self, task, progress=None) -> Profile:
        t0 = time.perf_counter()
        units = self.units(task)
        rel = self.last_relevance = self.relevance(task, progress)
        contrib = self.contributions(task, rel)

        def weight_of(layer, W):
            c = contrib[layer]
            if not self.channel_relevance:
                return float(c.sum()) / max(float((W.double() ** 2).sum()), 1e-30)
            rows = np.maximum((W.double() ** 2).sum(1, keepdim=True).cpu().numpy(), 1e-30)
            return c[:, None] / rows

        S = weighted_error(task, units, self.quants, weight_of)
        transformer = self._is_transformer(task)
        decoder = _batch_kind(task) == "lm"
        attention = self._attention(decoder)
        return self.profile(
            task, units, S, t0,
            score=("sum over the unit of C[layer, out] (Q_b(w) - w)^2 / ||W[out, :]||^2" if self.channel_relevance
                   else "C[layer] ||Q_b(W) - W||^2 / ||W||^2") + ", C = LRP |relevance| at the layer output, "
                  "normalized to sum 1 over layers",
            passes=f"{rel.batches} forward + {rel.batches} LRP backward", lrp_samples=int(len(rel.explained)),
            explained=("sum over positions of the logit of the true next token" if decoder else
                       "cosine of the sentence embedding (mean pooling, L2 norm held constant) to the unquantized "
                       "target" if transformer else f"logit of the {self.target} class"),
            rule_set=("AttnLRP for decoder LLMs (gradient x input with AttnLRP's rules, bitalloc.sensitivity.attnlrp)"
                      if decoder else f"transformer LRP, attention {attention}: {ATTENTION_TEXT[attention]}"
                      if transformer else f"zennit composite {self.composite}"),
            rules=rel.rules, epsilon=self.epsilon, conservation=round(rel.conservation, 4),
            **({} if rel.absorbed is None else {
                "attention_absorbed": round(rel.absorbed / float(rel.explained.sum()), 4),
                "conservation_with_absorbed": round(rel.conservation_with_absorbed, 6)}),
            contributions={n: round(float(c.sum()), 6) for n, c in contrib.items()},
            zennit_version=_zennit_version(), zennit_torchvision=ZENNIT_TORCHVISION)

    def relevance(self, task, progress=None) -> Relevance:
        """Run LRP over the calibration batches; nothing of the model is left changed."""
        model, layers = task.model, list(task.layers)
        mods = dict(model.named_modules())
        transformer = self._is_transformer(task)
        kind = _batch_kind(task)
        if kind == "lm":
            return self._decoder_relevance(task, progress)
        if transformer and kind != "embedding":
            raise BitallocError(f"estimator 'lrp': task {task.name!r}: transformers are explained through a "
                                "sentence embedding (encoder batches with a 'target'); this task has none")
        if kind == "embedding" and not (transformer and hasattr(model, "embeddings")):
            raise BitallocError(f"estimator 'lrp': task {task.name!r}: no BERT-style encoder (embeddings and "
                                "attention blocks) found")
        channel_dim = {n: (1 if isinstance(mods[n], torch.nn.modules.conv._ConvNd) else -1) for n in layers}
        store = _Store(channel_dim)
        rules: dict[str, str] = {}
        composite = (self._transformer_composite(model, layers, store, rules) if transformer
                     else self._cnn_composite(task, layers, store, rules))
        one = self._embedding_pass if transformer else self._classifier_pass
        try:
            explained, input_sum = _passes(task, lambda batch: one(model, batch, composite), progress)
        finally:
            composite.remove()
        channels = {n: store.abs[n] if n in store.abs else np.zeros(_out_channels(mods[n])) for n in layers}
        return Relevance(channels, explained, input_sum, rules, len(task.calib))

    def contributions(self, task, rel: Relevance) -> dict[str, np.ndarray]:
        """C[layer] (out,): |relevance| per output channel, normalized to sum 1 over all layers,
        floored at 1e-6 × the layer mean (and the layer mean at 1e-6 × the largest)."""
        mean = {n: float(c.mean()) for n, c in rel.channels.items()}
        top = max(mean.values(), default=0.0)
        if not top > 0:
            raise BitallocError(f"estimator 'lrp': task {task.name!r}: no relevance reached any layer "
                                "(is the explained output zero?)")
        out = {}
        for n, c in rel.channels.items():
            m = max(mean[n], 1e-6 * top)
            out[n] = np.maximum(c, 1e-6 * m) if mean[n] > 0 else np.full_like(c, m)
        total = sum(float(c.sum()) for c in out.values())
        if not np.isfinite(total):
            raise BitallocError(f"estimator 'lrp': task {task.name!r}: relevance is not finite; "
                                f"try a larger epsilon than {self.epsilon:g}")
        return {n: c / total for n, c in out.items()}

    def _attention(self, decoder: bool) -> str:
        if self.attention == "auto":
            return "attnlrp" if decoder else "cp"
        if decoder and self.attention == "cp":
            raise bad("attention", "cp", "is for encoders; decoder LLMs are explained with AttnLRP "
                                         "(attention=attnlrp or auto)")
        return self.attention

    def _decoder_relevance(self, task, progress=None) -> Relevance:
        """AttnLRP over a causal LM's calibration batches (bitalloc.sensitivity.attnlrp)."""
        from bitalloc.sensitivity.attnlrp import DecoderRules, explain_lm

        self._attention(decoder=True)
        model, layers = task.model, list(task.layers)
        mods = dict(model.named_modules())
        store = _Store({n: (1 if isinstance(mods[n], torch.nn.modules.conv._ConvNd) else -1) for n in layers})
        rules = DecoderRules(model, layers, lambda name, out, g: store.add(name, out * g), eps=self.epsilon)
        explained, input_sum = _passes(task, lambda batch: explain_lm(model, batch, rules), progress)
        channels = {n: store.abs[n] if n in store.abs else np.zeros(_out_channels(mods[n])) for n in layers}
        return Relevance(channels, explained, input_sum, dict(rules.rules), len(task.calib), absorbed=rules.absorbed)

    # -- composites --
    def _cnn_composite(self, task, layers, store, rules) -> Composite:
        kwargs = {"epsilon": self.epsilon}
        if self.composite == "epsilon_gamma_box":
            xs = [b[0] for b in task.calib]
            kwargs.update(low=float(min(float(x.min()) for x in xs)), high=float(max(float(x.max()) for x in xs)))
        base = COMPOSITES[self.composite](canonizers=[SequentialMergeBatchNorm()], **kwargs)
        wanted = set(layers)

        def module_map(ctx, name, module):
            rule = base.module_map(ctx, name, module)
            if name in wanted:
                rule = rule if rule is not None else Epsilon(self.epsilon)
                rules[name] = type(rule).__name__
                return _Layer(rule, name, store, eps=self.epsilon)
            if rule is not None:
                rules.setdefault(type(module).__name__, type(rule).__name__)
            return rule
        return Composite(module_map=module_map, canonizers=base.canonizers)

    def _transformer_composite(self, model, layers, store, rules) -> Composite:
        eps, wanted = self.epsilon, set(layers)
        role = {}
        for b in _attention_blocks(model):
            role.update({b["q"]: "q", b["k"]: "k", b["v"]: "v", b["o"]: "o"})
        cp = self._attention(decoder=False) == "cp"

        def module_map(ctx, name, module):
            if isinstance(module, torch.nn.Linear):
                r = role.get(name)
                hook = _Layer(Epsilon(eps), name, store if name in wanted else None, eps=eps,
                              grad_in={"v": 1.0 if cp else 0.5, "q": 0.25, "k": 0.25}.get(r, 0.0),
                              to_grad=r == "o", sink=cp and r in ("q", "k"))
                if name in wanted:
                    rules[name] = ("Epsilon" + (f" from gradient x input x {hook.grad_in:g}" if hook.grad_in else "")
                                   + (", gradient to attention" if hook.to_grad else "")
                                   + (", recorded, not propagated (CP-LRP)" if hook.sink else ""))
                return hook
            if isinstance(module, torch.nn.LayerNorm):
                rules.setdefault("LayerNorm", "LN-rule: std detached, Norm (LRP-0)")
                return Norm(eps)
            if isinstance(module, Sum):
                rules.setdefault("residual add", "Sum, Norm (share of the sum)")
                return Norm(eps)
            if _is_activation(module):
                rules.setdefault(type(module).__name__, "Pass (identity)")
                return Pass()
            return None
        canonizers = [_ListingCanonizer(_layer_norm_map), _ListingCanonizer(_residual_map)]
        if not any(_is_residual_block(m) for m in model.modules()):
            raise BitallocError("estimator 'lrp': this transformer has no BERT-style residual blocks "
                                "(LayerNorm(dense(h) + input)); only BERT-style encoders are supported")
        return Composite(module_map=module_map, canonizers=canonizers)

    # -- one batch --
    def _classifier_pass(self, model, batch, composite):
        x, y = batch[0], batch[1]
        x = x.detach().clone().requires_grad_(True)
        composite.register(model)
        try:
            logits = model(x)
            cls = y if self.target == "true" else logits.argmax(1)
            f = logits.gather(1, cls.view(-1, 1)).squeeze(1)
            seed = torch.zeros_like(logits).scatter(1, cls.view(-1, 1), f.detach().view(-1, 1))
            (r,) = torch.autograd.grad(logits, x, grad_outputs=seed)
        finally:
            composite.remove()
        return f.detach().double().numpy(), r.detach().double().flatten(1).sum(1).numpy()

    def _embedding_pass(self, model, batch, composite):
        leaf = []

        def make_leaf(module, inputs, output):
            out = output.detach().requires_grad_(True)
            leaf.append(out)
            return out
        composite.register(model)
        handle = model.embeddings.register_forward_hook(make_leaf)
        try:
            kw = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            h = model(**kw).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
            mean = (h.detach() * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            w = mask * batch["target"].to(h.dtype).unsqueeze(1) / (mask.sum(1, keepdim=True) *
                                                                  mean.norm(dim=-1)[:, None, None])
            seed = h.detach() * w  # relevance at the last hidden state; sums to the cosine
            (r,) = torch.autograd.grad(h, leaf[0], grad_outputs=seed)
        finally:
            handle.remove()
            composite.remove()
        return seed.double().sum((1, 2)).numpy(), r.detach().double().sum((1, 2)).numpy()

    # -- descriptions --
    @staticmethod
    def _is_transformer(task) -> bool:
        return bool(_attention_blocks(task.model))


def _passes(task, one, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Run `one(batch) -> (explained (B,), input relevance (B,))` over the calibration batches in
    eval mode with gradients on; returns both concatenated. The model's training flag is restored."""
    model = task.model
    explained, input_sum = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for i, batch in enumerate(task.calib):
                f, r_in = one(batch)
                explained.append(f)
                input_sum.append(r_in)
                if progress is not None:
                    progress(f"lrp batch {i + 1}/{len(task.calib)}")
    finally:
        model.train(was_training)
    return np.concatenate(explained), np.concatenate(input_sum)


def _batch_kind(task) -> str:
    b = task.calib[0] if task.calib else None
    if torch.is_tensor(b) and b.dim() == 2 and not b.is_floating_point() and _has_lm_head(task.model):
        return "lm"  # (B, T) token ids of a causal LM
    if isinstance(b, dict) and "input_ids" in b and "target" not in b and _has_lm_head(task.model):
        return "lm"
    if isinstance(b, dict) and "target" in b and "input_ids" in b and "attention_mask" in b:
        return "embedding"
    if isinstance(b, (tuple, list)) and len(b) == 2 and torch.is_tensor(b[0]) and torch.is_tensor(b[1]):
        return "classifier"
    raise BitallocError(f"estimator 'lrp': task {task.name!r}: cannot tell what to explain from its batches "
                        "(supported: (inputs, labels) for classifiers, encoder inputs with a 'target' embedding, "
                        "token ids of a causal LM)")


def _has_lm_head(model) -> bool:
    get = getattr(model, "get_output_embeddings", None)
    return callable(get) and get() is not None


def _out_channels(module) -> int:
    return int(module.weight.shape[0])


def _zennit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zennit")
    except PackageNotFoundError:
        return "unknown"
