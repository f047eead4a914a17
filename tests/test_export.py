"""Export formats: K-quant encoders against gguf's decoders, a GGUF round trip, and every text
format parsed back the way its tool reads it."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from bitalloc import BitallocError
from bitalloc.export import FORMATS, export, gptq, hqq, llamacpp
from bitalloc.quant import kquants
from bitalloc.quant.ggml_types import BLOCK, choose, llama_name, type_table
from bitalloc.export.names import gguf_name, hf_name
from bitalloc.quant.integer import IntQuant

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402


def _weights(rows, cols, seed=0):
    """Gaussian weights with 1% outliers (×8), like a trained linear layer."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.02
    w[rng.random(w.shape) < 0.01] *= 8
    return w


def _mse(a, b):
    return float(np.mean((np.asarray(a, np.float64) - b) ** 2))


# ---- K-quant encoders ------------------------------------------------------------------------
# The round-to-nearest quantizer of the same form and sub-block size, with float32 scales (the
# K-quants also store their scales in 4-8 bits, and win it back with the scale search).
RTN = {"Q2_K": IntQuant(2, 16, zero="float"), "Q3_K": IntQuant(3, 16, symmetric=True),
       "Q4_K": IntQuant(4, 32, zero="float"), "Q5_K": IntQuant(5, 32, zero="float"),
       "Q6_K": IntQuant(6, 16, symmetric=True)}


@pytest.mark.parametrize("qtype", kquants.TYPES)
def test_kquant_round_trip_through_gguf_decoder(qtype):
    w = _weights(48, 512)
    q = kquants.encode(w, qtype)
    n, size = BLOCK[qtype]
    assert q.dtype == np.uint8 and q.shape == (48, 512 // n * size)
    r = dequantize(q, GGMLQuantizationType[qtype]).reshape(w.shape)
    err, rtn = _mse(r, w), _mse(RTN[qtype].fake_quant(w), w)
    assert err <= 1.1 * rtn, (qtype, err, rtn)
    # fewer bits → more error: the layout really holds 2..6 bits
    assert err < _mse(IntQuant(kquants.TYPES.index(qtype) + 1, 16, zero="float").fake_quant(w), w)


@pytest.mark.parametrize("qtype", kquants.TYPES)
def test_kquant_degenerate_blocks(qtype):
    w = np.zeros((4, 256), np.float32)
    w[1] = 0.25
    w[2] = -0.25
    w[3, 17] = 1.0  # one spike: must decode at its own position
    r = dequantize(kquants.encode(w, qtype), GGMLQuantizationType[qtype]).reshape(w.shape)
    assert np.all(r[0] == 0)
    np.testing.assert_allclose(r[1:3], w[1:3], atol=2e-3)
    assert abs(r[3, 17] - 1.0) < 0.02 and np.abs(np.delete(r[3], 17)).max() < 0.02


def test_kquant_refuses_ragged_rows():
    with pytest.raises(ValueError, match="multiple of 256"):
        kquants.encode(np.zeros((2, 576), np.float32), "Q3_K")
    with pytest.raises(ValueError, match="not a K-quant"):
        kquants.encode(np.zeros((2, 256), np.float32), "Q4_0")


def test_type_choice_falls_back_by_row_length():
    table = type_table()
    assert choose(3, 1536, table) == ("Q3_K", False)
    assert choose(3, 576, table) == ("Q4_0", True)
    assert choose(6, 576, table) == ("Q8_0", True)
    assert choose(4, 40, table) == ("F16", True)
    assert choose(4, 576, type_table({4: "Q4_1"})) == ("Q4_1", False)
    with pytest.raises(BitallocError, match="GGUF export takes"):
        choose(7, 256, table)


# ---- a small synthetic Llama GGUF --------------------------------------------------------------
# (GGUF name, (rows, row length), source type): row lengths 512 (K-quants fit), 96 (32-blocks
# only) and 40 (no block type fits → F16).
TENSORS = [("token_embd.weight", (64, 512), "Q8_0")]
for _i in range(2):
    TENSORS += [(f"blk.{_i}.attn_norm.weight", (512,), "F32"),
                (f"blk.{_i}.attn_q.weight", (512, 512), "Q4_1"),
                (f"blk.{_i}.attn_k.weight", (96, 512), "Q4_1"),
                (f"blk.{_i}.attn_v.weight", (64, 96), "Q8_0"),
                (f"blk.{_i}.ffn_down.weight", (32, 40), "F32")]
BITS = {"model.layers.0.self_attn.q_proj": 2, "model.layers.1.self_attn.q_proj": 3,
        "model.layers.0.self_attn.k_proj": 4, "model.layers.1.self_attn.k_proj": 5,
        "model.layers.0.self_attn.v_proj": 3, "model.layers.1.self_attn.v_proj": 6,
        "model.layers.0.mlp.down_proj": 8, "model.layers.1.mlp.down_proj": 16}
EXPECTED = {"blk.0.attn_q.weight": "Q2_K", "blk.1.attn_q.weight": "Q3_K", "blk.0.attn_k.weight": "Q4_K",
            "blk.1.attn_k.weight": "Q5_K", "blk.0.attn_v.weight": "Q4_0", "blk.1.attn_v.weight": "Q8_0",
            "blk.0.ffn_down.weight": "F16", "blk.1.ffn_down.weight": "F16"}
# relative squared error bound per allocated bit-width (Gaussian weights with outliers)
REL_ERR = {2: 0.15, 3: 0.05, 4: 0.015, 5: 0.004, 6: 0.001, 8: 1e-4, 16: 1e-6}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "tiny.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(128)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(64)])
    w.add_string("tokenizer.chat_template", "{{ messages }}")
    for k, (name, shape, qtype) in enumerate(TENSORS):
        x = _weights(*shape, seed=k) if len(shape) == 2 else np.ones(shape, np.float32)
        if qtype == "F32":
            w.add_tensor(name, x)
        else:
            w.add_tensor(name, quantize(x, GGMLQuantizationType[qtype]), raw_dtype=GGMLQuantizationType[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _float(t):
    return np.asarray(dequantize(t.data, t.tensor_type), np.float64).reshape(int(t.shape[-1]), -1) \
        if len(t.shape) == 2 else np.asarray(t.data, np.float64)


def test_gguf_round_trip(source, tmp_path):
    out = tmp_path / "mixed.gguf"
    res = export(BITS, "gguf", out, source=source)
    assert res.path == out and res.units == len(BITS)
    src, got = GGUFReader(str(source)), GGUFReader(str(out))
    assert [t.name for t in got.tensors] == [t.name for t in src.tensors]
    src_t = {t.name: t for t in src.tensors}
    by_tensor = {gguf_name(n): b for n, b in BITS.items()}
    for t in got.tensors:
        s = src_t[t.name]
        assert list(t.shape) == list(s.shape)
        if t.name not in by_tensor:  # embeddings and norms: byte for byte
            assert t.tensor_type == s.tensor_type and np.array_equal(np.asarray(t.data), np.asarray(s.data))
            continue
        assert t.tensor_type.name == EXPECTED[t.name]
        w, r = _float(s), _float(t)
        rel = _mse(r, w) / float(np.mean(w * w))
        assert rel < REL_ERR[by_tensor[t.name]], (t.name, rel)
    # metadata and tokenizer copied; the allocation recorded
    for key, f in src.fields.items():
        if not key.startswith("GGUF.") and key != "general.file_type":
            assert got.fields[key].contents() == f.contents(), key
    recorded = dict(zip(got.fields["bitalloc.allocation.tensors"].contents(),
                        [GGMLQuantizationType(t).name for t in got.fields["bitalloc.allocation.types"].contents()]))
    assert recorded == {gguf_name(n): EXPECTED[gguf_name(n)] for n in BITS}
    assert out.stat().st_size == res.summary["predicted_bytes"]
    assert res.summary["types"] == {t: list(EXPECTED.values()).count(t) for t in sorted(set(EXPECTED.values()))}
    assert any("written as Q4_0" in n for n in res.notes) and any("written as F16" in n for n in res.notes)


def test_gguf_type_map_keeps_source_bytes(source, tmp_path):
    """A unit whose target type equals its source type (Q4_1 here) is copied unchanged."""
    out = tmp_path / "q41.gguf"
    export({"model.layers.0.self_attn.q_proj": 4}, "gguf", out, source=source, type_map="4=Q4_1")
    src = {t.name: t for t in GGUFReader(str(source)).tensors}
    t = next(t for t in GGUFReader(str(out)).tensors if t.name == "blk.0.attn_q.weight")
    assert t.tensor_type.name == "Q4_1" and np.array_equal(np.asarray(t.data), np.asarray(src[t.name].data))


@pytest.mark.parametrize("bits, match", [
    ({"model.layers.5.self_attn.q_proj": 4}, "allocation for another model"),
    ({"encoder.layer.0.attention.self.bogus": 4}, "no GGUF tensor name"),
    ({"model.layers.0.self_attn.q_proj": 7}, "GGUF export takes"),
    ({"model.layers.0.self_attn.q_proj:g3": 4}, "group/channel unit"),
])
def test_gguf_bad_input_writes_nothing(source, tmp_path, bits, match):
    with pytest.raises(BitallocError, match=match):
        export(bits, "gguf", tmp_path / "x.gguf", source=source)
    assert list(tmp_path.iterdir()) == []


def test_gguf_failure_midway_leaves_no_file(source, tmp_path, monkeypatch):
    def boom(w, qtype, **kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(kquants, "encode", boom)
    out = tmp_path / "x.gguf"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        export(BITS, "gguf", out, source=source, force=True)
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.gguf"]


def test_gguf_names_map_both_ways():
    assert gguf_name("model.layers.12.self_attn.v_proj") == "blk.12.attn_v.weight"
    assert gguf_name("model.layers.3.mlp.down_proj") == "blk.3.ffn_down.weight"
    assert gguf_name("model.layers.3.mlp.act_fn") is None
    for n in ("model.layers.7.self_attn.o_proj", "model.layers.0.mlp.gate_proj", "model.embed_tokens"):
        assert hf_name(gguf_name(n)) == n


# ---- text formats, parsed back as their tools read them -----------------------------------------
@pytest.fixture(scope="module")
def alloc():
    import bitalloc

    return bitalloc.solve(bitalloc.load_default_profile(), budget=3.25)


def _decoys(names):
    """Module names next to the real ones that a loose regex would wrongly match."""
    out = set()
    for n in names:
        out |= {n + "x", "x" + n, n.replace("layers.1.", "layers.11.").replace("blk.1.", "blk.11.")}
    return out - set(names)


def test_llamacpp_tensor_type_file(alloc, source, tmp_path):
    out = tmp_path / "types.txt"
    export(alloc, "llama.cpp", out)
    entries = llamacpp.parse(out.read_text())
    assert len(entries) == len(alloc.bits)
    table = type_table()
    for name, b in alloc.bits.items():
        assert llamacpp.type_of(entries, gguf_name(name)) == llama_name(table[b][0])  # ggml_type_name spelling
    tensors = {gguf_name(n) for n in alloc.bits}
    for decoy in _decoys(tensors) | {"token_embd.weight", "blk.0.attn_norm.weight", "output.weight"}:
        assert llamacpp.type_of(entries, decoy) is None, decoy
    # with the model's shapes known, the type that fits is written (same as the gguf format)
    export(BITS, "llama.cpp", tmp_path / "t2.txt", source=source)
    entries = llamacpp.parse((tmp_path / "t2.txt").read_text())
    assert {t: llamacpp.type_of(entries, t).upper() for t in EXPECTED} == EXPECTED


def _gptq_fit(bits):
    return {n: (8 if b in (5, 6, 7) else b) for n, b in bits.items()}


def test_gptq_dynamic_matches_exactly_the_intended_modules(alloc, tmp_path):
    out = tmp_path / "gptq.json"
    res = export(alloc, "gptq", out, round_up=True, fused="split")
    cfg = json.loads(out.read_text())
    want = _gptq_fit(alloc.bits)
    assert {n: gptq.bits_of(cfg, n) for n in want} == want
    assert all(k.startswith(("+:", "-:")) and k.endswith("$") for k in cfg["dynamic"])
    for pattern in cfg["dynamic"]:  # every rule matches exactly the units it was written for
        hit = {n for n in list(want) + sorted(_decoys(want)) if re.match(pattern[2:], n)}
        assert hit and all(want[n] == cfg["dynamic"][pattern]["bits"] for n in hit) and not hit - set(want)
    assert any("5 bits written as 8" in n for n in res.notes)


def test_gptq_fused_modules_share_one_rule(tmp_path):
    bits = {}
    for i, (qkv, gu, down) in enumerate([(3, 4, 2), (4, 3, 16), (3, 3, 3)]):
        bits |= {f"model.layers.{i}.self_attn.{p}": qkv for p in ("q_proj", "k_proj", "v_proj")}
        bits |= {f"model.layers.{i}.mlp.{p}": gu for p in ("gate_proj", "up_proj")}
        bits |= {f"model.layers.{i}.self_attn.o_proj": 3, f"model.layers.{i}.mlp.down_proj": down}
    export(bits, "gptq", tmp_path / "g.json", group_size=64)
    cfg = json.loads((tmp_path / "g.json").read_text())
    assert cfg["bits"] == 3 and cfg["group_size"] == 64
    for n, b in bits.items():
        assert gptq.bits_of(cfg, n) == (None if b == 16 else b)
    # vLLM loads q/k/v and gate/up as one module: the same rule must cover the fused name
    assert gptq.bits_of(cfg, "model.layers.0.mlp.gate_up_proj") == 4
    assert gptq.bits_of(cfg, "model.layers.1.self_attn.qkv_proj") == 4
    qkv_rules = [k for k in cfg["dynamic"] if "q_proj" in k]
    assert len(qkv_rules) == 1 and re.match(qkv_rules[0][2:], "model.layers.1.self_attn.v_proj")
    # pieces of one fused module with different bits: refused, or raised to the largest with a note
    bits["model.layers.2.self_attn.k_proj"] = 4
    with pytest.raises(BitallocError, match="one bit-width"):
        export(bits, "gptq", tmp_path / "h.json")
    assert not (tmp_path / "h.json").exists()
    res = export(bits, "gptq", tmp_path / "h.json", fused="max")
    cfg = json.loads((tmp_path / "h.json").read_text())
    assert gptq.bits_of(cfg, "model.layers.2.self_attn.q_proj") == 4 and any("raised" in n for n in res.notes)


def test_gptq_refuses_widths_it_lacks(tmp_path):
    with pytest.raises(BitallocError, match="GPTQ takes 2, 3, 4, 8"):
        export({"a.b": 5}, "gptq", tmp_path / "g.json")
    assert not (tmp_path / "g.json").exists()


def test_hqq_per_layer_and_dynamic(tmp_path):
    bits = {f"model.layers.{i}.{m}": b for i in range(3)
            for m, b in (("self_attn.q_proj", 4), ("self_attn.k_proj", 2), ("mlp.down_proj", 16))}
    export(bits, "hqq", tmp_path / "h.json", group_size=32)
    cfg = json.loads((tmp_path / "h.json").read_text())
    assert cfg == {n: (None if b == 16 else {"nbits": b, "group_size": 32}) for n, b in bits.items()}
    export(bits, "hqq-dynamic", tmp_path / "d.json")
    dyn = json.loads((tmp_path / "d.json").read_text())
    assert dyn == {"self_attn.q_proj": {"nbits": 4, "group_size": 64}, "self_attn.k_proj": {"nbits": 2, "group_size": 64}}
    assert {hqq.linear_tag(n) for n in bits} == {"self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"}
    bits["model.layers.1.self_attn.k_proj"] = 3
    with pytest.raises(BitallocError, match="one config"):
        export(bits, "hqq-dynamic", tmp_path / "e.json")
    assert not (tmp_path / "e.json").exists()
    res = export(bits, "hqq-dynamic", tmp_path / "e.json", merge="max")
    assert json.loads((tmp_path / "e.json").read_text())["self_attn.k_proj"]["nbits"] == 3
    assert res.notes == ("self_attn.k_proj: 2 of 3 layers raised to 3 bits (layers had 2, 3)",)
    with pytest.raises(BitallocError, match="HQQ takes 1, 2, 3, 4, 8"):
        export({"x": 6}, "hqq", tmp_path / "f.json")
    with pytest.raises(BitallocError, match="multiple of 8"):
        export(bits, "hqq", tmp_path / "f.json", group_size=12)


def test_json_map_and_registry(alloc, tmp_path):
    export(alloc, "json", tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == alloc.bits
    assert set(FORMATS.names()) == {"gguf", "llama.cpp", "gptq", "hqq", "hqq-dynamic", "json"}
    with pytest.raises(BitallocError, match="allowed: gguf"):
        export(alloc, "onnx", tmp_path / "m.onnx")
    with pytest.raises(BitallocError, match="file exists"):
        export(alloc, "json", tmp_path / "m.json")
    from bitalloc import Allocation

    fp4 = Allocation(bits={"a.b": 4}, status="optimal", solver="ilp", formats={"a.b": "fp4_e2m1"})
    with pytest.raises(BitallocError, match="integer bit-widths"):
        export(fp4, "json", tmp_path / "f.json")


def test_cli_export(alloc, source, tmp_path, capsys):
    from bitalloc.cli.app import main

    a = tmp_path / "a.json"
    alloc.save(a)
    assert main(["export", "--allocation", str(a), "--format", "llama.cpp", "--out", str(tmp_path / "t.txt")]) == 0
    assert "wrote" in capsys.readouterr().out
    cases = [["--format", "nope"], ["--format", "hqq", "--fused", "max"], ["--format", "gptq"],
             ["--format", "gguf", "--source", str(source)]]
    for extra in cases:  # unknown format, option of another format, 5/6 bits, another model's GGUF
        assert main(["export", "--allocation", str(a), "--out", str(tmp_path / "x")] + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("bitalloc: error:") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "t.txt"]
    small = tmp_path / "s.json"
    small.write_text(json.dumps(alloc.to_json() | {"bits": BITS}))
    assert main(["export", "--allocation", str(small), "--format", "gguf", "--source", str(source),
                 "--out", str(tmp_path / "s.gguf")]) == 0
    assert "Q2_K ×1 (2.625 bpw)" in capsys.readouterr().out


@pytest.mark.slow
def test_smollm2_gguf_export_loads_and_scores(alloc, tmp_path):
    """The full SmolLM2 export at 3.25 bits: types as planned, values close, and transformers
    loads the file and computes a finite perplexity with it."""
    from bitalloc.zoo.demo import load_task, smollm2_gguf

    out = tmp_path / "smollm2-3.25.gguf"
    res = export(alloc, "gguf", out)
    src = {t.name: t for t in GGUFReader(str(smollm2_gguf())).tensors}
    table = type_table()
    for t in GGUFReader(str(out)).tensors:
        name = hf_name(t.name)
        if name in alloc.bits:
            assert t.tensor_type.name == choose(alloc.bits[name], int(t.shape[0]), table)[0]
            w, r = _float(src[t.name]), _float(t)
            assert _mse(r, w) / float(np.mean(w * w)) < REL_ERR[alloc.bits[name]] * 2
    assert 3.25 < res.summary["gguf_avg_bpw"] < 5
    task = load_task("smollm2", samples=1, seq_len=128)
    base = task.quality(task.model)["perplexity"]
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name, dtype=torch.float32).eval()
    ppl = task.quality(model)["perplexity"]
    assert np.isfinite(ppl) and base < ppl < 5 * base
