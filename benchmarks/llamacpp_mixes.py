"""llama.cpp's own quantization mixes against bitalloc allocations in GGML types, judged by llama.cpp.

    nice -n 10 python benchmarks/llamacpp_mixes.py [--work DIR] [--windows 16] [--seq-len 256]

1. An F32 GGUF of SmolLM2-135M (bitalloc's exporter, every projection fp32; token_embd stays
   the source's Q8_0, which every mix below keeps too: its 576-wide rows take no K-quant).
2. llama.cpp's `llama_model_quantize` makes Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M,
   Q5_K_M from it (no importance matrix).
3. bitalloc: a Fisher profile of the 210 projections over GGML candidates (each scored with its
   real encoder), an importance matrix from the same calibration pass, and for each mix an
   allocation solved under `file size <= that mix's file size` (GgufSizeCost, exact to the byte),
   exported with the imatrix. Two candidate sets: all GGML types, and the same without Q4_1
   (the source weights sit on a Q4_1 grid, so Q4_1 reproduces them exactly at 5.0 bpw).
4. Uniform files (every projection one legacy type) for the "never worse than an equal-or-larger
   uniform file" check.
5. Every file is loaded in llama.cpp and scored on the same held-out windows (pydoc held-out split,
   llama.cpp's tokenizer); the table has perplexity, and for bitalloc the paired per-window
   loss difference to the llama.cpp mix of that size with its standard error.

Outputs: docs/llamacpp_mixes.json, docs/llamacpp_mixes.png, the table on stdout.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

MIXES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_M")
CANDS = ("q2_k", "q3_k", "q4_0", "q4_1", "q4_k", "q5_0", "q5_1", "q5_k", "q6_k", "q8_0", "fp16")
UNIFORM = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def alloc_of(formats: dict[str, str]):
    from bitalloc.allocation import Allocation
    from bitalloc.quant.formats.spec import parse_format

    return Allocation.from_json({"schema": "bitalloc.allocation/1", "status": "optimal", "solver": "uniform",
                                 "bits": {n: parse_format(f).bits for n, f in formats.items()}, "formats": formats})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/bitalloc-llamacpp")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="docs/llamacpp_mixes")
    ap.add_argument("--report-only", action="store_true",
                    help="only the files already measured (caches in --work, also side-*.json of helper runs)")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.report_only:
        return report_only(work, a)

    from bitalloc.export import export
    from bitalloc.export.names import hf_name
    from bitalloc.verify import llamacpp as lc
    from bitalloc.zoo.demo import smollm2_gguf

    src = smollm2_gguf()
    names = [n for t in lc.tensor_types(src) if (n := hf_name(t)) and n.startswith("model.layers.")]
    f32 = work / "smollm2-f32.gguf"
    if not f32.exists():
        log("F32 GGUF ...")
        export(alloc_of(dict.fromkeys(names, "fp32")), "gguf", f32, source=src)
    files = {}  # label -> (kind, path)
    for mix in MIXES:
        p = work / f"llamacpp-{mix}.gguf"
        if not p.exists():
            log(f"llama.cpp {mix} ...")
            lc.quantize(f32, p, mix, threads=a.threads)
        files[f"llama.cpp {mix}"] = ("llama.cpp", p)
    for u in UNIFORM:
        p = work / f"uniform-{u}.gguf"
        if not p.exists():
            log(f"uniform {u} ...")
            export(alloc_of(dict.fromkeys(names, u)), "gguf", p, source=src)
        files[f"uniform {u.upper()}"] = ("uniform", p)

    prof_path, imat_path = work / "fisher-ggml.profile.json", work / "imatrix.gguf"
    if not prof_path.exists() or not imat_path.exists():
        from bitalloc.sensitivity.imatrix import collect
        from bitalloc.sensitivity import ESTIMATORS
        from bitalloc.zoo.demo import load_task

        log("profile (fisher, GGML candidates) + imatrix ...")
        task = load_task("smollm2", samples=8, seq_len=128)
        t0 = time.time()
        profile = ESTIMATORS.create("fisher", bits=CANDS, granularity="layer").estimate(task)
        log(f"  profile {time.time() - t0:.0f} s")
        collect(task).write(imat_path, force=True)
        profile.save(prof_path, force=True)
        del task
    from bitalloc.export.imatrix import read_imatrix
    from bitalloc.export.gguf_size import GgufSizeCost
    from bitalloc.problem import Constraint, Problem
    from bitalloc.profile import Profile
    from bitalloc.solvers import get_solver

    profile = Profile.load(prof_path)
    imat = read_imatrix(imat_path).means()
    sets = {"bitalloc": None, "bitalloc no-Q4_1": "q4_1"}
    for label, drop in sets.items():
        allowed = np.ones(profile.sensitivity.shape, bool)
        if drop:
            allowed[:, profile.formats.index(drop)] = False
        for mix in MIXES:
            mib = files[f"llama.cpp {mix}"][1].stat().st_size / 2**20
            p = work / f"{label.replace(' ', '-')}-{mix}.gguf"
            if not p.exists():
                log(f"{label} at {mix}'s size {mib:.3f} MiB ...")
                cost = GgufSizeCost(source=src)
                alloc = get_solver("ilp").solve(Problem(profile, [Constraint(cost, mib)], allowed=allowed))
                if not alloc.ok:
                    log(f"  {alloc.status}")
                    continue
                res = export(alloc, "gguf", p, source=src, imatrix=imat)
                assert p.stat().st_size == res.summary["predicted_bytes"]
            files[f"{label} @{mix}"] = (label, p)

    # same held-out windows for every file, tokenized by llama.cpp
    from bitalloc.zoo.corpus import pydoc_split, token_windows

    _, held = pydoc_split(0)
    with lc.LlamaCppModel(files["llama.cpp Q4_K_M"][1], n_ctx=a.seq_len, threads=a.threads) as m:
        ids = m.tokenize(held)
    windows = token_windows(ids, a.windows, a.seq_len, 1)
    results = {}
    cache = work / f"ppl-{a.windows}x{a.seq_len}.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    for label, (kind, p) in files.items():
        key = f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}"
        if key not in done:
            t0 = time.time()
            done[key] = lc.perplexity(p, windows, threads=a.threads).window_nll.tolist()
            cache.write_text(json.dumps(done))
            log(f"{label}: ppl {np.exp(np.mean(done[key])):.3f} ({time.time() - t0:.0f} s)")
        results[label] = {"kind": kind, "file": p.name, "bytes": p.stat().st_size, "nll": np.array(done[key]),
                          "types": _type_counts(p)}
    report(results, a.out, a.windows, a.seq_len)


def _label(p: Path) -> tuple[str, str]:
    stem = p.stem
    if stem.startswith("llamacpp-"):
        return "llama.cpp", f"llama.cpp {stem[9:]}"
    if stem.startswith("uniform-"):
        return "uniform", f"uniform {stem[8:].upper()}"
    kind, mix = stem.rsplit("-", 1)
    kind = kind.replace("-", " ", 1)  # bitalloc-no-Q4_1 → "bitalloc no-Q4_1", as main() names it
    return kind, f"{kind} @{mix}"


def report_only(work: Path, a):
    done = {}
    for c in [work / f"ppl-{a.windows}x{a.seq_len}.json", *sorted(work.glob("side-*.json"))]:
        if c.exists():
            done.update(json.loads(c.read_text()))
    results = {}
    for p in sorted(work.glob("*.gguf")):
        key = f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}"
        if key in done:
            kind, label = _label(p)
            results[label] = {"kind": kind, "file": p.name, "bytes": p.stat().st_size, "nll": np.array(done[key]),
                              "types": _type_counts(p)}
    for label in [k for k in results if "@" in k]:  # paired only against a measured mix
        if f"llama.cpp {label.split('@')[1]}" not in results:
            results[label]["kind"] += " (mix not measured)"
    report(results, a.out, a.windows, a.seq_len)


def _type_counts(p) -> dict[str, int]:
    from bitalloc.verify.llamacpp import tensor_types

    out: dict[str, int] = {}
    for name, t in tensor_types(p).items():
        if name.startswith("blk.") and not name.endswith("norm.weight"):
            out[t] = out.get(t, 0) + 1
    return dict(sorted(out.items()))


def report(results, out, n_windows, seq_len):
    rows = []
    ppl = {k: float(np.exp(v["nll"].mean())) for k, v in results.items()}
    print(f"\nheld-out: {n_windows} windows x {seq_len} tokens (pydoc held-out split, llama.cpp tokenizer)\n")
    print("| file | MiB | ppl in llama.cpp | vs llama.cpp mix of that size: Δloss ± SE (nats) | projection types |")
    print("|---|---:|---:|---|---|")
    for k, v in sorted(results.items(), key=lambda kv: (kv[1]["bytes"], kv[0])):
        vs = ""
        if "@" in k and f"llama.cpp {k.split('@')[1]}" in results:
            ref = results[f"llama.cpp {k.split('@')[1]}"]
            d = v["nll"] - ref["nll"]
            se = d.std(ddof=1) / np.sqrt(len(d))
            vs = f"{d.mean():+.4f} ± {se:.4f} ({d.mean() / se:+.1f} SE)"
            v["vs_mix"] = {"mean": float(d.mean()), "se": float(se)}
        types = ", ".join(f"{t}×{n}" for t, n in v["types"].items())
        print(f"| {k} | {v['bytes'] / 2**20:.2f} | {ppl[k]:.3f} | {vs} | {types} |")
        rows.append({"label": k, "kind": v["kind"], "bytes": v["bytes"], "perplexity": ppl[k], "types": v["types"],
                     **({"vs_mix": v["vs_mix"]} if "vs_mix" in v else {}),
                     "window_nll": [float(x) for x in v["nll"]]})
    # uniform check: every bitalloc file vs every uniform file of equal or larger size
    print("\nbitalloc files worse than a uniform file of equal or larger size:")
    worse = [(k, u) for k, v in results.items() if v["kind"].startswith("bitalloc")
             for u, w in results.items() if w["kind"] == "uniform" and w["bytes"] >= v["bytes"] and ppl[u] < ppl[k]]
    print("\n".join(f"  {k} ({ppl[k]:.3f}) vs {u} ({ppl[u]:.3f})" for k, u in worse) or "  none")
    Path(out + ".json").write_text(json.dumps({"windows": n_windows, "seq_len": seq_len, "rows": rows}, indent=1))
    _plot(results, ppl, out + ".png")


def _plot(results, ppl, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    style = {"llama.cpp": ("s", "tab:red"), "bitalloc": ("o", "tab:blue"), "bitalloc no-Q4_1": ("^", "tab:cyan"),
             "uniform": ("D", "tab:gray")}
    for kind, (marker, color) in style.items():
        pts = sorted((v["bytes"] / 2**20, ppl[k], k) for k, v in results.items() if v["kind"] == kind)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=kind,
                linestyle="-" if kind != "uniform" else "none")
        if kind in ("llama.cpp", "uniform"):
            for x, y, k in pts:
                ax.annotate(k.split()[-1], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    ax.set_xlabel("GGUF file size (MiB)")
    ax.set_ylabel("perplexity in llama.cpp (held-out pydoc)")
    ax.set_title("SmolLM2-135M: llama.cpp mixes vs bitalloc allocations at the same file size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
