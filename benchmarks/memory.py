"""Peak memory of the estimators against the weights' bytes, on random Llama models of three sizes.

    python benchmarks/memory.py [--sizes 256,512,768] [--estimators fisher,weight_error,salience]

Each (size, estimator) runs in a fresh process: it loads the model folder with
`bitalloc.load_model` (float32, CPU, 1 calibration window of 16 tokens so activations are
negligible), records the resident set before loading (`base`, torch and transformers imported),
after loading (`loaded`: once glibc's malloc_trim has returned what loading freed to the OS, so
that the estimator's allocations cannot be served from freed load buffers and look smaller than
they are, and with the peak reset there through /proc/self/clear_refs, so that loading's own
transient peak is not counted as the estimator's), and after the estimator the peak resident set
since then (VmHWM). Reported: weight bytes of the whole
model, (peak − base) / weight bytes, and how much the file-backed resident set (RssFile: library
code paged in by the first forward/backward kernels, not the estimator's data) grew from loading to
the end of the estimator. Models are built here from transformers configs (no download).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys
import torch, transformers  # noqa: F401  (imported before the baseline)
from bitalloc import load_model, profile
def rss_mb(key='VmRSS'):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) / 1024
base = rss_mb()
task = load_model(sys.argv[1], samples=1, seq_len=16, device='cpu', dtype='float32', held_out=1)
import ctypes, gc
gc.collect()
ctypes.CDLL(None).malloc_trim(0)  # what loading freed goes back to the OS: the estimator cannot hide in it
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # reset the peak (VmHWM) to the current resident set: the load's own peak does not count
loaded, file_loaded = rss_mb(), rss_mb('RssFile')
wbytes = sum(p.numel() * p.element_size() for p in task.model.parameters())
qbytes = sum(task.model.get_submodule(n).weight.numel() * 4 for n in task.layers)
profile(task, estimator=sys.argv[2], bits=(2, 4, 8), group_size=64)
peak = rss_mb('VmHWM')
print(json.dumps({"base_mb": base, "loaded_mb": loaded, "peak_mb": peak, "weight_mb": wbytes / 2**20,
                  "unit_weight_mb": qbytes / 2**20, "file_growth_mb": rss_mb('RssFile') - file_loaded}))
"""


def table(rows) -> str:
    """Markdown: weights, load cost (loaded − base), estimator cost (peak − loaded), and the peak in
    units of the weights' bytes: 1 + (peak − loaded) / weights (the loaded model counted as its
    weights), raw (peak − base) / weights (with everything loading allocates besides), and the
    growth of the file-backed resident set during the estimator (part of peak − loaded)."""
    out = ["| hidden | params | estimator | weights (MiB) | loaded − base (MiB) | peak − loaded (MiB) | "
           "(weights + peak − loaded) / weights | (peak − base) / weights | of which file-backed (MiB) |",
           "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['hidden']} | {r['weight_mb'] * 2**20 / 4 / 1e6:.1f} M | {r['estimator']} | {r['weight_mb']:.1f} | "
                   f"{r['loaded_mb'] - r['base_mb']:.1f} | {r['peak_mb'] - r['loaded_mb']:.1f} | {r['ratio']:.2f} | "
                   f"{r['ratio_raw']:.2f} | {r['file_growth_mb']:.1f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,512,768", help="hidden sizes (4 blocks, FFN 4x hidden)")
    ap.add_argument("--estimators", default="fisher,weight_error,salience")
    ap.add_argument("--out", default=None, help="JSON with the rows")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import tiny_models

    rows = []
    tok = tiny_models.tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        for h in (int(x) for x in args.sizes.split(",")):
            folder = Path(tmp) / f"llama-{h}"
            torch.manual_seed(0)
            cfg = LlamaConfig(vocab_size=tiny_models.VOCAB, hidden_size=h, num_hidden_layers=4, num_attention_heads=8,
                              num_key_value_heads=8, intermediate_size=4 * h, tie_word_embeddings=False)
            LlamaForCausalLM(cfg).save_pretrained(str(folder))
            tok.save_pretrained(str(folder))
            for est in args.estimators.split(","):
                res = subprocess.run([sys.executable, "-c", CHILD, str(folder), est], capture_output=True, text=True)
                if res.returncode:
                    print(res.stderr[-2000:], file=sys.stderr)
                    return 1
                r = json.loads(res.stdout.strip().splitlines()[-1])
                r.update(hidden=h, estimator=est, ratio_raw=(r["peak_mb"] - r["base_mb"]) / r["weight_mb"],
                         ratio=1 + (r["peak_mb"] - r["loaded_mb"]) / r["weight_mb"])
                rows.append(r)
                print(f"hidden {h:4d} {est:12s} weights {r['weight_mb']:7.1f} MiB  peak-base {r['peak_mb'] - r['base_mb']:7.1f} MiB"
                      f"  ratio {r['ratio']:.2f} (raw {r['ratio_raw']:.2f})  file-backed +{r['file_growth_mb']:.1f} MiB", flush=True)
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
