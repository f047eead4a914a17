"""GGML types as candidates, exact GGUF sizes, the importance matrix, and llama.cpp as the judge.

A tiny random Llama (transformers LlamaConfig: hidden 256, so the attention rows take K-quants;
FFN 96, so ffn_down's 96-weight rows cannot) is written as an F32 GGUF with the layout
llama.cpp reads; profiles are scored on the torch model, the export starts from that GGUF.
"""
from __future__ import annotations

import numpy as np
import pytest

from bitalloc import BitallocError
from bitalloc.export import export
from bitalloc.quant.formats.ggml import GgmlType
from bitalloc.quant.formats.spec import parse_format

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
from gguf import GGUFReader, GGUFWriter  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

CANDS = ("q2_k", "q3_k", "q4_0", "q4_1", "q4_k", "q5_0", "q5_k", "q6_k", "q8_0", "fp16")
PARTS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down"}
VOCAB, SEQ = 256, 32


def _permute(w, n_head):
    """convert_hf_to_gguf's q/k row order for llama.cpp's rope."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, path):
    """The torch Llama as an F32 GGUF llama.cpp loads (gpt2-style vocabulary of VOCAB tokens)."""
    c = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(VOCAB)
    w.add_file_type(0)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "default")
    toks = [chr(0x100 + i) for i in range(VOCAB)]
    w.add_array("tokenizer.ggml.tokens", toks)
    w.add_array("tokenizer.ggml.token_type", [1] * VOCAB)
    w.add_array("tokenizer.ggml.merges", [f"{toks[0]} {toks[1]}"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        for mod, part in PARTS.items():
            x = sd[p + mod + ".weight"]
            if part == "attn_q":
                x = _permute(x, c.num_attention_heads)
            elif part == "attn_k":
                x = _permute(x, c.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{part}.weight", np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def load_gguf_weights(model, path):
    """Put a GGUF's dequantized projections into the torch model (q/k rows un-permuted)."""
    c = model.config
    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    mods = dict(model.named_modules())
    with torch.no_grad():
        for i in range(c.num_hidden_layers):
            for mod, part in PARTS.items():
                t = tensors[f"blk.{i}.{part}.weight"]
                x = np.asarray(dequantize(t.data, t.tensor_type), np.float32).reshape(int(t.shape[1]), int(t.shape[0]))
                if part == "attn_q":
                    x = _unpermute(x, c.num_attention_heads)
                elif part == "attn_k":
                    x = _unpermute(x, c.num_key_value_heads)
                mods[f"model.layers.{i}.{mod}"].weight.copy_(torch.from_numpy(x))


def tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # trained-like weights: heavier tails than the init
        for n, p in model.named_parameters():
            if p.ndim == 2 and "proj" in n:
                p.mul_(1 + 4 * (torch.rand_like(p) < 0.01))
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from bitalloc.models.task import Task

    model = tiny_llama()
    src = write_gguf(model, tmp_path_factory.mktemp("tiny") / "tiny-f32.gguf")
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, VOCAB, (4, SEQ), generator=gen) for _ in range(2)]
    held = [torch.randint(0, VOCAB, (4, SEQ), generator=gen)]
    layers = [f"model.layers.{i}.{m}" for i in range(2) for m in PARTS]

    def loss(m, batch):
        return m(input_ids=batch, labels=batch).loss

    def quality(m):
        with torch.no_grad():
            nll = float(np.mean([float(loss(m, b)) for b in held]))
        return {"perplexity": float(np.exp(nll)), "loss": nll}

    macs = {n: int(dict(model.named_modules())[n].weight.numel()) for n in layers}
    task = Task("tiny-llama", model, calib, held, layers, loss, quality, macs,
                meta={"source": str(src), "seq_len": SEQ, "samples": 8, "calibration": "random tokens"})
    return task, src


@pytest.fixture(scope="module")
def profile(tiny):
    from bitalloc.sensitivity import ESTIMATORS

    task, _ = tiny
    return ESTIMATORS.create("salience", bits=CANDS, granularity="layer").estimate(task)


# ---- formats -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, bits, bpw, block", [("q2_k", 2, 2.625, 256), ("q3_k", 3, 3.4375, 256),
                                                    ("q4_0", 4, 4.5, 32), ("q4_1", 4, 5.0, 32), ("q4_k", 4, 4.5, 256),
                                                    ("q5_0", 5, 5.5, 32), ("q5_1", 5, 6.0, 32), ("q5_k", 5, 5.5, 256),
                                                    ("q6_k", 6, 6.5625, 256), ("q8_0", 8, 8.5, 32)])
def test_ggml_format_costs_are_exact(name, bits, bpw, block):
    info = parse_format(name)
    assert (info.family, info.bits, info.block) == ("ggml", bits, block)
    q = GgmlType(name.upper())
    assert q.bpw == bpw and q.storage_bits(7, 2 * block) == 7 * 2 * block * bpw
    w = np.random.default_rng(0).standard_normal((4, 2 * block)).astype(np.float32)
    assert q.encode_bytes(w).nbytes * 8 == q.storage_bits(4, 2 * block)
    assert q.feasible(2 * block) and not q.feasible(block + 32 if block == 256 else block + 16)
    with pytest.raises(BitallocError, match="row length"):
        q.fake_quant(np.ones((2, block + (32 if block == 256 else 16)), np.float32))


def test_aliases_and_unknown_names():
    assert parse_format("f16").name == "fp16" and parse_format("f32").name == "fp32"
    with pytest.raises(BitallocError, match="q4_k"):
        parse_format("q4_z")


# ---- profile, solve, export ---------------------------------------------------------------------
def test_profile_marks_short_rows_infeasible(profile):
    k_cols = [k for k, f in enumerate(profile.formats) if f.endswith("_k")]
    for i, name in enumerate(profile.names):
        row = profile.sensitivity[i]
        if name.endswith("down_proj"):  # rows of 96 weights: no K-quant
            assert np.isinf(row[k_cols]).all() and np.isfinite(np.delete(row, k_cols)).all()
        else:
            assert np.isfinite(row).all()
            assert row[profile.formats.index("q2_k")] > row[profile.formats.index("q4_k")] > row[profile.formats.index("q8_0")]


def _solve_mib(profile, src, mib):
    from bitalloc.export.gguf_size import GgufSizeCost
    from bitalloc import Constraint, Problem
    from bitalloc.solvers import get_solver

    cost = GgufSizeCost(source=src)
    problem = Problem(profile, [Constraint(cost, mib)])
    alloc = get_solver("ilp").solve(problem)
    return alloc, cost


def test_budget_mib_export_is_the_solved_file(profile, tiny, tmp_path):
    from bitalloc.export.gguf import open_gguf, tensor_bytes
    from bitalloc.export.names import gguf_name

    _, src = tiny
    sizes = []
    for mib in (0.9, 1.1, 1.6):
        alloc, cost = _solve_mib(profile, src, mib)
        assert alloc.ok, alloc.status
        choice = np.array([profile.formats.index(alloc.formats[n]) for n in profile.names])
        solved = cost.total(profile, choice) * 2**20
        assert solved <= mib * 2**20 * (1 + 1e-12)
        for n in profile.names:  # short rows never take a K-quant
            if n.endswith("down_proj"):
                assert not alloc.formats[n].endswith("_k")
        out = tmp_path / f"m{mib}.gguf"
        res = export(alloc, "gguf", out, source=src)
        assert out.stat().st_size == round(solved) == res.summary["predicted_bytes"]
        tensors = {t.name: t for t in open_gguf(out).tensors}
        for n in profile.names:
            t = tensors[gguf_name(n)]
            fmt = alloc.formats[n]
            want = {"fp16": "F16", "fp32": "F32"}.get(fmt, fmt.upper())
            assert t.tensor_type.name == want
            assert -(-int(t.n_bytes) // 32) * 32 == tensor_bytes(want, int(t.shape[1]), int(t.shape[0]))
        sizes.append(out.stat().st_size)
    assert sizes == sorted(sizes) and len(set(sizes)) == 3


def test_export_bytes_are_the_real_encoder(tiny, tmp_path):
    """Each tensor is exactly GgmlType(type).encode_bytes of the source weights."""
    _, src = tiny
    formats = {"model.layers.0.self_attn.q_proj": "q3_k", "model.layers.0.mlp.down_proj": "q5_0",
               "model.layers.1.self_attn.v_proj": "q6_k", "model.layers.1.mlp.gate_proj": "q4_1"}
    from bitalloc.allocation import Allocation

    alloc = Allocation.from_json({"schema": "bitalloc.allocation/1", "status": "optimal", "solver": "manual",
                                  "bits": {n: parse_format(f).bits for n, f in formats.items()}, "formats": formats})
    out = tmp_path / "x.gguf"
    res = export(alloc, "gguf", out, source=src)
    got = {t.name: t for t in GGUFReader(str(out)).tensors}
    srct = {t.name: t for t in GGUFReader(str(src)).tensors}
    from bitalloc.export.names import gguf_name

    for n, f in formats.items():
        g = gguf_name(n)
        w = np.asarray(srct[g].data, np.float32)
        assert np.array_equal(np.asarray(got[g].data), GgmlType(f.upper()).encode_bytes(w))
    r = GGUFReader(str(out))
    assert r.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q3_K_M) or res.summary["file_type"]
    names = r.fields["bitalloc.allocation.tensors"].contents()
    types = r.fields["bitalloc.allocation.types"].contents()
    assert {n: gguf.GGMLQuantizationType(t).name for n, t in zip(names, types)} == \
        {gguf_name(n): f.upper() for n, f in formats.items()}


def test_file_type_follows_the_dominant_type(tiny, tmp_path):
    _, src = tiny
    names = [f"model.layers.{i}.{m}" for i in range(2) for m in PARTS]
    from bitalloc.allocation import Allocation

    formats = {n: ("q4_k" if not n.endswith("down_proj") else "q8_0") for n in names}
    alloc = Allocation.from_json({"schema": "bitalloc.allocation/1", "status": "optimal", "solver": "manual",
                                  "bits": {n: parse_format(f).bits for n, f in formats.items()}, "formats": formats})
    out = tmp_path / "ft.gguf"
    export(alloc, "gguf", out, source=src)
    assert GGUFReader(str(out)).fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    assert GGUFReader(str(src)).fields["general.file_type"].contents() == 0  # the source said ALL_F32


def test_export_refuses_an_infeasible_k_quant(tiny, tmp_path):
    _, src = tiny
    from bitalloc.allocation import Allocation

    alloc = Allocation.from_json({"schema": "bitalloc.allocation/1", "status": "optimal", "solver": "manual",
                                  "bits": {"model.layers.0.mlp.down_proj": 4}, "formats": {"model.layers.0.mlp.down_proj": "q4_k"}})
    with pytest.raises(BitallocError, match="never replaced"):
        export(alloc, "gguf", tmp_path / "bad.gguf", source=src)
    assert not (tmp_path / "bad.gguf").exists()


def test_cli_solve_budget_mib_then_export(profile, tiny, tmp_path, capsys):
    from bitalloc.cli.app import main

    _, src = tiny
    pf = tmp_path / "p.json"
    profile.save(pf)
    a = tmp_path / "a.json"
    assert main(["solve", "--profile", str(pf), "--budget-mib", "1.2", "--source", str(src), "--out", str(a)]) == 0
    out = tmp_path / "a.gguf"
    assert main(["export", "--allocation", str(a), "--format", "gguf", "--source", str(src), "--out", str(out)]) == 0
    assert out.stat().st_size <= 1.2 * 2**20
    assert main(["solve", "--profile", str(pf), "--budget-mib", "0.01", "--source", str(src)]) != 0
    err = capsys.readouterr().err
    assert "infeasible" in err and "Traceback" not in err
    assert main(["solve", "--profile", str(pf), "--budget-mib", "abc", "--source", str(src)]) == 2


# ---- importance matrix ---------------------------------------------------------------------------
def test_imatrix_round_trip_and_weighting(tiny, tmp_path):
    from bitalloc.export import imatrix as im
    from bitalloc.quant import kquants

    task, src = tiny
    from bitalloc.sensitivity.imatrix import collect

    mat = collect(task)
    assert set(mat.sums) == {f"blk.{i}.{p}.weight" for i in range(2) for p in PARTS.values()}
    assert all(c == 2 * 4 * SEQ for c in mat.counts.values())
    for fmt in ("gguf", "dat"):
        path = mat.write(tmp_path / f"imatrix.{fmt}")
        back = im.read_imatrix(path).means()
        for n, v in mat.means().items():
            np.testing.assert_allclose(back[n], v, rtol=1e-6)
    r = GGUFReader(str(tmp_path / "imatrix.gguf"))
    assert r.fields["general.type"].contents() == "imatrix"
    assert r.fields["imatrix.chunk_size"].contents() == SEQ
    # the importance lowers the importance-weighted error of every K-quant
    w = np.asarray({t.name: t for t in GGUFReader(str(src)).tensors}["blk.0.attn_q.weight"].data, np.float32)
    imp = mat.means()["blk.0.attn_q.weight"]
    imp = imp * np.exp(np.random.default_rng(0).standard_normal(imp.shape)).astype(np.float32)  # sharper than random tokens give
    for q in kquants.TYPES:
        plain = GgmlType(q).fake_quant(w) - w
        weighted = GgmlType(q).fake_quant(w, imp) - w
        assert float((weighted ** 2 * imp).sum()) < float((plain ** 2 * imp).sum()), q


# ---- llama.cpp as the judge (needs the `llamacpp` extra) ----------------------------------------
def _llamacpp():
    from bitalloc.verify import llamacpp

    if not llamacpp.available():
        pytest.skip("llama.cpp's library is not installed (pip install 'bitalloc[llamacpp]', docs/llamacpp.md)")
    return llamacpp


def test_llamacpp_logits_match_dequantized_forward(profile, tiny, tmp_path):
    lc = _llamacpp()
    task, src = tiny
    alloc, _ = _solve_mib(profile, src, 1.1)
    out = tmp_path / "judge.gguf"
    export(alloc, "gguf", out, source=src)
    ids = np.random.default_rng(3).integers(0, VOCAB, SEQ)
    with lc.LlamaCppModel(out, n_ctx=SEQ) as m:
        theirs = m.logits(ids)
    model = tiny_llama()
    with torch.no_grad():
        unquantized = model(input_ids=torch.from_numpy(ids)[None]).logits[0].numpy()
    load_gguf_weights(model, out)
    with torch.no_grad():
        ours = model(input_ids=torch.from_numpy(ids)[None]).logits[0].numpy()
    assert theirs.shape == ours.shape
    rel = np.linalg.norm(theirs - ours) / np.linalg.norm(ours)
    assert rel < 0.02, rel  # llama.cpp quantizes activations to 8 bits in its dot products
    # the match is to the quantized weights, not to the float model
    assert rel < 0.5 * np.linalg.norm(theirs - unquantized) / np.linalg.norm(unquantized)
    assert (theirs.argmax(1) == ours.argmax(1)).mean() > 0.9


def test_llamacpp_quantizer_writes_the_same_types(profile, tiny, tmp_path):
    lc = _llamacpp()
    _, src = tiny
    alloc, _ = _solve_mib(profile, src, 1.1)
    ours = tmp_path / "ours.gguf"
    export(alloc, "gguf", ours, source=src)
    check = lc.requantize_check(src, ours, tmp_path / "theirs.gguf")
    assert check["same_types"], check["types_differ"]
    assert check["tensor_bytes_ours"] == check["tensor_bytes_llamacpp"]


def test_cli_verify_runtime_input_errors(tmp_path, capsys):
    from bitalloc.cli.app import main

    assert main(["verify", "--model", "smollm2", "--runtime", "llama.cpp"]) == 2
    assert main(["verify", "--model", "smollm2", "--runtime", "llama.cpp", "--gguf", str(tmp_path / "none.gguf")]) == 2
    assert main(["verify", "--model", "minilm", "--runtime", "llama.cpp", "--gguf", str(tmp_path / "none.gguf")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--gguf" in err


def test_llamacpp_verify_cli_on_exported_files(profile, tiny, tmp_path):
    """`runtime_report` pairs files on the same windows (the tiny vocabulary: random-token windows)."""
    lc = _llamacpp()
    _, src = tiny
    small, _ = _solve_mib(profile, src, 0.9)
    big, _ = _solve_mib(profile, src, 1.6)
    a, b = tmp_path / "small.gguf", tmp_path / "big.gguf"
    export(small, "gguf", a, source=src)
    export(big, "gguf", b, source=src)
    windows = np.random.default_rng(0).integers(0, VOCAB, (6, SEQ))
    ra, rb = lc.perplexity(a, windows), lc.perplexity(b, windows)
    mean, se = lc.paired(ra, rb)
    assert np.isclose(mean, float(np.mean(rb.window_nll - ra.window_nll))) and se > 0
    assert ra.bytes < rb.bytes and np.isfinite(ra.perplexity) and np.isfinite(rb.perplexity)
