"""Block replay: re-run only the decoder blocks after a change, on cached block inputs.

A causal language model is embedding → blocks 0…L−1 → final norm → head. Quantizing one weight
in block b changes nothing before block b, so its effect on the output is found by running
blocks b…L−1 + norm + head on block b's cached input, instead of the whole model: for SmolLM2
(30 blocks, a head as costly as 8 blocks) 1/46 of a forward per block plus the head.

`BlockReplay(task)` finds the block stack (the `nn.ModuleList` holding the task's layers), the
final norm and the head (`get_output_embeddings()`), runs the unquantized model once on every
calibration batch through the task's own `loss` with forward pre-hooks that capture each block's
positional and keyword arguments (hidden states, position embeddings, attention mask; any KV
cache is dropped), and keeps the reference log-probabilities. It checks its own causal-LM loss
(mean next-token cross-entropy, labels = input ids) against the task's loss and its tail
(norm → head) against the logits the model produced; a model that fails either check is
`unsupported` (the caller falls back to full reruns).

`evaluate(layer, weights)` → (loss increase, KL) for K candidate weights of one layer: block b is
run once per candidate (weights swapped in and restored), the K outputs are stacked along the
batch dimension (up to `max_rows` token rows per stacked run) and run through blocks b+1… and
the tail together. KL is KL(P_unquantized ‖ P_quantized) of the next-token distribution, mean
over all token positions; loss is the mean next-token cross-entropy, mean over batches like
`Task.mean_loss`. Sums are float64; the model's own device and dtype are used throughout.

The tail never forms log-probabilities: with the reference's logits z_ref and p = softmax(z_ref)
kept from the capture,
    KL(p ‖ softmax(z)) = lse(z) − lse(z_ref) − p·(z − z_ref),    NLL = lse(z) − z[label],
so a cell costs the head's matrix product, one log-sum-exp over the vocabulary and one dot
product (the elementwise log-softmax and KL were a third of a cell's time on SmolLM2). The
difference z − z_ref is taken of the computed float32 logits on purpose: their rounding (a
p-weighted bias of ~4e-7 per position) cancels, which matters for the ~1e-5 KLs of 8 bits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f")


def first(out):
    """A block's hidden-state output (blocks return a tensor or a tuple starting with it)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def find_blocks(model, layers: list[str]) -> tuple[str, list] | None:
    """(name, blocks) of the `nn.ModuleList` whose children hold the most of `layers` (at least
    two children must hold some), or None."""
    import torch

    best = None
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.ModuleList) or len(mod) < 2:
            continue
        prefixes = [f"{name}.{i}." for i in range(len(mod))]
        held = [sum(1 for l in layers if l.startswith(p)) for p in prefixes]
        if sum(1 for h in held if h) >= 2 and (best is None or sum(held) > best[0]):
            best = (sum(held), name, list(mod))
    return None if best is None else (best[1], best[2])


def block_index(layers: list[str], blocks_name: str, n_blocks: int) -> dict[str, int]:
    """layer name → index of the block holding it (layers outside the stack are left out)."""
    out = {}
    for l in layers:
        for i in range(n_blocks):
            if l.startswith(f"{blocks_name}.{i}."):
                out[l] = i
                break
    return out


def input_ids(batch):
    """The token ids of a language-model batch (a tensor or a dict with `input_ids`), or None."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch if batch.dtype in (torch.int64, torch.int32) and batch.dim() == 2 else None
    if isinstance(batch, dict) and isinstance(batch.get("input_ids"), torch.Tensor):
        return batch["input_ids"]
    return None


def lm_stats(logits, labels, ref_logp=None) -> tuple[float, int, float, int]:
    """(Σ next-token NLL, positions, Σ KL(ref ‖ model), positions) of logits (B, T, V) in float64
    sums. labels: (B, T) token ids (−100 ignored, shifted by one as in causal-LM training);
    ref_logp: (B, T, V) reference log-probabilities (None: KL sum 0)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    lab = labels[:, 1:]
    keep = lab != -100
    nll = -logp[:, :-1].gather(-1, lab.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    nll_sum = float(nll[keep].sum(dtype=torch.float64))
    kl_sum = 0.0
    if ref_logp is not None:
        kl_sum = float((ref_logp.exp() * (ref_logp - logp)).sum(dtype=torch.float64))
    return nll_sum, int(keep.sum()), kl_sum, int(logits.shape[0] * logits.shape[1])


def lse64(logits):
    """log Σ exp over the last dimension as float64: the exponentials summed in float32 below the
    row maximum, the log and the maximum added in float64 (a float32 result is only good to
    ~2e-6 at |lse| ≈ 20, which biases small KL differences)."""
    m = logits.amax(-1, keepdim=True)
    s = (logits - m).exp_().sum(-1)
    return s.double().log() + m.squeeze(-1).double()


def tail_stats(logits, labels, ref_z, ref_lse, ref_p) -> tuple[float, int, float, int]:
    """lm_stats without log-probabilities (see the module docstring). logits, ref_z, ref_p:
    (B, T, V); labels: (B, T); ref_lse: (B, T) float64."""
    import torch

    z = logits.float()
    lse = lse64(z)
    lab = labels[:, 1:]
    keep = lab != -100
    picked = z[:, :-1].gather(-1, lab.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    nll_sum = float((lse[:, :-1] - picked)[keep].sum())
    lin = (ref_p * (z - ref_z)).sum(-1)   # p·(z − z_ref); torch's cascade sum (a matmul's long dot loses ~1e-6)
    kl = (lse - ref_lse) - lin.double()
    return nll_sum, int(keep.sum()), float(kl.sum()), int(z.shape[0] * z.shape[1])


@dataclass
class _Batch:
    args: list            # per block: positional args after the hidden states
    kwargs: list          # per block: keyword args (cache dropped)
    hidden: list          # per block: input hidden states (B, T, H); plus the last block's output
    labels: object        # (B, T) token ids
    ref_z: object = None    # (B, T, V) float32 reference logits
    ref_p: object = None    # (B, T, V) float32 reference probabilities softmax(ref_z)
    ref_lse: object = None  # (B, T) float64 log-sum-exp of ref_z


class BlockReplay:
    """Cached block inputs of a task's calibration set (see the module docstring).

    max_rows: token rows per stacked run of blocks (candidates × batch × positions; bounds
    memory); chunk_rows: token rows per head evaluation (bounds the logits' memory, rows × vocab
    × 4 bytes); tail: also keep the reference log-probabilities for `evaluate` (False: block
    inputs/outputs only, for the `local` estimator)."""

    method = "replay"

    def __init__(self, task, max_rows: int = 4096, chunk_rows: int = 512, tail: bool = True):
        self.task, self.max_rows, self.chunk_rows = task, max_rows, chunk_rows
        self.unsupported = None
        self.has_kl = tail
        found = find_blocks(task.model, task.layers)
        if found is None:
            self.unsupported = "no nn.ModuleList of blocks holds the layers"
            return
        self.blocks_name, self.blocks = found
        self.block_of = block_index(task.layers, self.blocks_name, len(self.blocks))
        self.head = self.norm = None
        if tail:
            get = getattr(task.model, "get_output_embeddings", None)
            self.head = get() if callable(get) else None
            if self.head is None:
                self.unsupported = "the model has no output head (get_output_embeddings)"
                return
            base = getattr(task.model, "base_model", task.model)
            self.norm = next((getattr(base, n) for n in NORM_NAMES if hasattr(base, n)), None)
        self.batches: list[_Batch] = []
        self.base_loss = float("nan")
        self.capture(tail)

    # ---- capture -----------------------------------------------------------------------
    def capture(self, tail: bool) -> None:
        import torch

        task = self.task
        n = len(self.blocks)
        losses, ref_losses = [], []
        for batch in task.calib:
            ids = input_ids(batch)
            if tail and ids is None:
                self.unsupported = "calibration batches are not token ids"
                return
            cur = _Batch([None] * n, [None] * n, [None] * (n + 1), None)
            hooks = []
            got = {}

            def pre(i):
                def hook(mod, args, kwargs):
                    cur.hidden[i] = args[0].detach()
                    cur.args[i] = tuple(None if type(a).__name__.endswith("Cache") else a for a in args[1:])
                    cur.kwargs[i] = _no_cache(kwargs)
                return hook

            def post(mod, args, out):
                cur.hidden[n] = first(out).detach()

            for i, blk in enumerate(self.blocks):
                hooks.append(blk.register_forward_pre_hook(pre(i), with_kwargs=True))
            hooks.append(self.blocks[-1].register_forward_hook(post))
            if tail:
                hooks.append(self.head.register_forward_hook(lambda m, a, o: got.__setitem__("logits", o.detach())))
            try:
                with torch.no_grad():
                    losses.append(float(task.loss(task.model, batch)))
            finally:
                for h in hooks:
                    h.remove()
            if any(h is None for h in cur.hidden):
                self.unsupported = "not every block ran on the calibration data"
                return
            if tail:
                labels = batch.get("labels", ids) if isinstance(batch, dict) else ids
                cur.labels = labels
                with torch.no_grad():
                    logits = self.tail_logits(cur.hidden[n])
                if "logits" not in got or got["logits"].shape != logits.shape or not torch.allclose(
                        got["logits"].float(), logits.float(), rtol=1e-4, atol=1e-4):
                    self.unsupported = "norm -> head does not reproduce the model's logits"
                    return
                self.keep_reference(cur, logits)
                nll, cnt, _, _ = tail_stats(logits, labels, cur.ref_z, cur.ref_lse, cur.ref_p)
                if cnt == 0 or abs(nll / cnt - losses[-1]) > 1e-4 * max(1.0, abs(losses[-1])):
                    self.unsupported = (f"the task's loss ({losses[-1]:.6g}) is not the next-token cross-entropy "
                                        f"({nll / max(cnt, 1):.6g})")
                    return
                ref_losses.append(nll / cnt)
            self.batches.append(cur)
        self.base_loss = float(np.mean(losses))
        # loss increases are taken against the reference scored by the same arithmetic as the cells
        self.ref_loss = float(np.mean(ref_losses)) if ref_losses else self.base_loss

    @staticmethod
    def keep_reference(cur: _Batch, logits) -> None:
        """What the tail needs of the unquantized run: logits, probabilities, log-sum-exp."""
        import torch

        cur.ref_z = logits.float()
        cur.ref_lse = lse64(cur.ref_z)
        cur.ref_p = torch.exp(cur.ref_z.double() - cur.ref_lse.unsqueeze(-1)).float()

    def normed(self, hidden):
        return self.norm(hidden) if self.norm is not None else hidden

    def tail_logits(self, hidden):
        return self.head(self.normed(hidden))

    # ---- runs --------------------------------------------------------------------------
    def block_out(self, b: int, bi: int, hidden=None):
        """Block b on batch bi's cached input (or `hidden`, stacked candidates)."""
        B = self.batches[bi]
        h = B.hidden[b] if hidden is None else hidden
        reps = h.shape[0] // B.hidden[b].shape[0]
        args, kwargs = B.args[b], B.kwargs[b]
        if reps > 1:
            n0 = B.hidden[b].shape[0]
            args = tuple(_repeat(a, reps, n0) for a in args)
            kwargs = {k: _repeat(v, reps, n0) for k, v in kwargs.items()}
        return first(self.blocks[b](h, *args, **kwargs))

    def evaluate(self, layer: str, weights: list) -> tuple[np.ndarray, np.ndarray]:
        """(loss increase (K,), KL (K,)) with `layer`'s weight set to each of `weights` (tensors
        shaped like it) in turn; the original weight is restored exactly."""
        import torch

        b = self.block_of[layer]
        weight = dict(self.task.model.named_modules())[layer].weight
        K = len(weights)
        nll = np.zeros(K)
        kl = np.zeros(K)
        orig = weight.detach().clone()
        with torch.no_grad():
            for bi, B in enumerate(self.batches):
                rows = int(np.prod(B.hidden[b].shape[:-1]))
                per = max(1, self.max_rows // max(rows, 1))
                for c0 in range(0, K, per):
                    ks = list(range(c0, min(K, c0 + per)))
                    outs = []
                    try:
                        for k in ks:
                            weight.copy_(weights[k])
                            outs.append(self.block_out(b, bi))
                    finally:
                        weight.copy_(orig)
                    h = torch.cat(outs) if len(outs) > 1 else outs[0]
                    for j in range(b + 1, len(self.blocks)):
                        h = self.block_out(j, bi, h)
                    n0 = B.hidden[b].shape[0]
                    for i, k in enumerate(ks):
                        s_nll, s_n, s_kl, s_pos = self.tail_stats(h[i * n0:(i + 1) * n0], B)
                        nll[k] += s_nll / s_n
                        kl[k] += s_kl / s_pos
        nb = len(self.batches)
        return nll / nb - self.ref_loss, kl / nb

    def tail_stats(self, hidden, B: _Batch) -> tuple[float, int, float, int]:
        """lm_stats over one batch's final hidden states, `chunk_rows` token rows at a time."""
        T = hidden.shape[1]
        per = max(1, self.chunk_rows // T)
        tot = [0.0, 0, 0.0, 0]
        for s in range(0, hidden.shape[0], per):
            sl = slice(s, s + per)
            part = tail_stats(self.tail_logits(hidden[sl]), B.labels[sl], B.ref_z[sl], B.ref_lse[sl], B.ref_p[sl])
            tot = [a + b for a, b in zip(tot, part)]
        return tuple(tot)

    def fraction(self, layer: str, tail: bool = True) -> float:
        """Cost of one candidate of `layer` as a fraction of a full forward, by weights touched:
        blocks b… (+ head) over all blocks + head (`tail=False`: block b alone)."""
        per_block = sum(p.numel() for blk in self.blocks for p in blk.parameters()) / len(self.blocks)
        head = self.head.weight.numel() if self.head is not None else 0
        emb = getattr(self.task.model, "get_input_embeddings", lambda: None)()
        if head == 0 and emb is not None:
            head = emb.weight.numel()  # tied head: the local estimator still compares against a full forward
        L, b = len(self.blocks), self.block_of[layer]
        return float(((L - b) * per_block + head) / (L * per_block + head) if tail else per_block / (L * per_block + head))


class FullRerun:
    """The same interface as BlockReplay, by rerunning the task's whole `loss` per candidate (any
    model). KL is recorded where the model has an output head and token-id batches (its logits
    are captured with a forward hook), else it is None."""

    method = "full"

    def __init__(self, task):
        import torch

        self.task = task
        get = getattr(task.model, "get_output_embeddings", None)
        self.head = get() if callable(get) else None
        if self.head is not None and any(input_ids(b) is None for b in task.calib):
            self.head = None
        self.ref_logp, losses = [], []
        for batch in task.calib:
            loss, logits = self.run(batch)
            losses.append(loss)
            if logits is not None:
                self.ref_logp.append(torch.log_softmax(logits.float(), dim=-1))
        self.base_loss = float(np.mean(losses))
        self.has_kl = self.head is not None

    def run(self, batch):
        """(task loss, logits or None) of one batch."""
        import torch

        got = {}
        h = (self.head.register_forward_hook(lambda m, a, o: got.__setitem__("logits", o.detach()))
             if self.head is not None else None)
        try:
            with torch.no_grad():
                loss = float(self.task.loss(self.task.model, batch))
        finally:
            if h is not None:
                h.remove()
        return loss, got.get("logits")

    def evaluate(self, layer: str, weights: list) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        weight = dict(self.task.model.named_modules())[layer].weight
        K = len(weights)
        loss, kl = np.zeros(K), np.zeros(K)
        orig = weight.detach().clone()
        try:
            for k, w in enumerate(weights):
                with torch.no_grad():
                    weight.copy_(w)
                for bi, batch in enumerate(self.task.calib):
                    l, logits = self.run(batch)
                    loss[k] += l
                    if self.has_kl:
                        ids = input_ids(batch)
                        _, _, s_kl, s_pos = lm_stats(logits, ids, self.ref_logp[bi])
                        kl[k] += s_kl / s_pos
        finally:
            with torch.no_grad():
                weight.copy_(orig)
        nb = len(self.task.calib)
        return loss / nb - self.base_loss, (kl / nb if self.has_kl else None)

    def fraction(self, layer: str, tail: bool = True) -> float:
        return 1.0


def _no_cache(kwargs: dict) -> dict:
    """Keyword args without the KV cache (a transformers Cache, `past_key_value(s)`)."""
    out = {}
    for k, v in kwargs.items():
        if k in ("past_key_value", "past_key_values", "cache", "layer_past") or type(v).__name__.endswith("Cache"):
            out[k] = None
        elif k == "use_cache":
            out[k] = False
        else:
            out[k] = v
    return out


def _repeat(x, reps: int, n0: int):
    """Tile a block argument for `reps` stacked copies of a batch of n0 sequences: tensors (and
    tensors inside tuples) whose first dimension is n0 > 1 are repeated; others broadcast."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.repeat(reps, *([1] * (x.dim() - 1))) if x.dim() and x.shape[0] == n0 and n0 > 1 else x
    if isinstance(x, tuple):
        return tuple(_repeat(v, reps, n0) for v in x)
    return x
