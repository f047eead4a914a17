"""Export of mixed-format allocations: `mxfp4` units become GGML MXFP4 tensors in a GGUF that
decode to exactly bitalloc's MXFP4 weights; formats a target cannot express are refused in one
line, writing nothing."""
from __future__ import annotations

import numpy as np
import pytest

from bitalloc import Allocation, BitallocError
from bitalloc.export import export, mxfp4
from bitalloc.quant.integer import quantizer_for

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

# GGUF name: (rows, row length); row 40 fits no 32-weight block
TENSORS = {"blk.0.attn_q.weight": (64, 128), "blk.0.attn_k.weight": (32, 128), "blk.0.attn_v.weight": (32, 40),
           "blk.0.ffn_down.weight": (16, 256)}
FORMATS = {"model.layers.0.self_attn.q_proj": "mxfp4", "model.layers.0.self_attn.k_proj": "int4",
           "model.layers.0.self_attn.v_proj": "mxfp4", "model.layers.0.mlp.down_proj": "int8"}


def weights(rows, cols, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.02
    w[rng.random(w.shape) < 0.01] *= 8
    w[0, :32] = 0  # an all-zero block
    return w


def alloc(formats):
    from bitalloc.quant.formats.spec import parse_format

    bits = {n: parse_format(f).bits for n, f in formats.items()}  # each format's element bits
    return Allocation(bits=bits, formats=dict(formats), status="optimal", solver="ilp")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "tiny.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_string("tokenizer.ggml.model", "gpt2")
    for k, (name, shape) in enumerate(TENSORS.items()):
        w.add_tensor(name, weights(*shape, seed=k))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_mxfp4_blocks_match_ggml_and_bitalloc():
    w = weights(8, 256, seed=7)
    data = mxfp4.encode(w)
    assert data.dtype == np.uint8 and data.shape == (8, 256 // 32 * 17)
    back = dequantize(data, GGMLQuantizationType.MXFP4).reshape(8, 256)
    np.testing.assert_array_equal(back, quantizer_for("mxfp4").fake_quant(w))
    # gguf-py's reference encoder gives the same bytes (no exact ties in random weights)
    np.testing.assert_array_equal(data, quantize(w, GGMLQuantizationType.MXFP4))
    with pytest.raises(ValueError, match="multiple of 32"):
        mxfp4.encode(w[:, :40])


def test_gguf_export_writes_mxfp4_units(source, tmp_path):
    out = tmp_path / "mixed.gguf"
    res = export(alloc(FORMATS), "gguf", out, source=source)
    src = {t.name: t for t in GGUFReader(str(source)).tensors}
    got = {t.name: t for t in GGUFReader(str(out)).tensors}
    assert {n: t.tensor_type.name for n, t in got.items()} == {
        "blk.0.attn_q.weight": "MXFP4", "blk.0.attn_k.weight": "Q4_0", "blk.0.attn_v.weight": "F16",
        "blk.0.ffn_down.weight": "Q8_0"}
    q = got["blk.0.attn_q.weight"]
    rows, cols = TENSORS[q.name]
    assert q.data.nbytes == rows * cols // 32 * 17  # 4.25 bits per weight: 4-bit codes + an E8M0 byte per 32
    w = np.asarray(src[q.name].data, np.float32).reshape(rows, cols)
    np.testing.assert_array_equal(dequantize(q.data, q.tensor_type).reshape(rows, cols),
                                  quantizer_for("mxfp4").fake_quant(w))
    assert res.summary["bpw_by_type"]["MXFP4"] == 4.25
    assert any("not a multiple of the MXFP4 block" in n and "F16" in n for n in res.notes), res.notes


@pytest.mark.parametrize("fmt", ["nvfp4", "fp4_e2m1", "mxfp8_e4m3", "fp8_e4m3"])
def test_gguf_refuses_formats_it_cannot_express(source, tmp_path, fmt):
    a = alloc(dict(FORMATS, **{"model.layers.0.self_attn.k_proj": fmt}))
    with pytest.raises(BitallocError) as e:
        export(a, "gguf", tmp_path / "x.gguf", source=source)
    msg = str(e.value)
    assert "\n" not in msg and fmt in msg and "gguf export takes integer bit-widths (int2..int8, fp16, mxfp4, fp32, q2_k" in msg
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", ["gptq", "hqq", "hqq-dynamic", "llama.cpp", "json"])
def test_integer_only_targets_refuse_mxfp4(tmp_path, target):
    with pytest.raises(BitallocError, match=rf"{target} export takes integer bit-widths \(int2..int8, fp16\)"):
        export(alloc(FORMATS), target, tmp_path / "x.out")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_gguf_mxfp4_and_refusal(source, tmp_path, capsys):
    from bitalloc.cli.app import main

    a = tmp_path / "a.json"
    alloc(FORMATS).save(a)
    out = tmp_path / "m.gguf"
    assert main(["export", "--allocation", str(a), "--format", "gguf", "--source", str(source), "--out", str(out)]) == 0
    assert {t.name: t.tensor_type.name for t in GGUFReader(str(out)).tensors}["blk.0.attn_q.weight"] == "MXFP4"
    capsys.readouterr()
    assert main(["export", "--allocation", str(a), "--format", "gptq", "--out", str(tmp_path / "g.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mxfp4" in err and "gptq export takes integer bit-widths" in err
    assert not (tmp_path / "g.json").exists()
