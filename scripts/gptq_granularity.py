"""GPTQ and RTN at 3.25 bits with allocations at finer granularity than layers: fisher profiles at
column-group (`group`, 128 input columns) and output-channel (`channel`) granularity on the GPTQ
calibration tokens, solved by `bitalloc.solve` (auto), applied with mixed bits inside each layer,
budgets re-checked from the packed tensors, held-out perplexity as scripts/gptq_table.py.

    python scripts/gptq_granularity.py [--granularity group,channel] [--calib 8] [--quantizers rtn,gptq]
                                       [--out docs/gptq/granularity.json]
"""
import argparse
import json
import time
from pathlib import Path

import bitalloc
from bitalloc.fileio import atomic_write, dumps
from bitalloc.zoo.demo import load_task
from bitalloc.sensitivity import profile_task
from bitalloc.verify.budgets import check_budgets, restored

QUANT = dict(group_size=128, symmetric=False, zero="int")
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--granularity", default="group,channel")
ap.add_argument("--calib", type=int, default=8, help="calibration sequences of 256 tokens (fisher and GPTQ)")
ap.add_argument("--quantizers", default="rtn,gptq")
ap.add_argument("--out", default="docs/gptq/granularity.json")
args = ap.parse_args()
task = load_task("smollm2", samples=args.calib, seq_len=256, held_out=16)
layers = sorted({u.name.split(":")[0] for u in task.units("layer")})
out = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}  # rows of other runs kept
grans = args.granularity.split(",")
for gran in grans:
    t0 = time.perf_counter()
    prof = profile_task(task, "fisher", bits=(2, 3, 4, 5, 6, 8), granularity=gran, **QUANT)
    tp = time.perf_counter() - t0
    t0 = time.perf_counter()
    a = bitalloc.solve(prof, budget=3.25)
    ts = time.perf_counter() - t0
    print(gran, prof.n_units, "units; profile", round(tp, 1), "s; solve", round(ts, 1), "s", a.status, a.meta.get("gap"), flush=True)
    with restored(task.model, layers) as reset:
        for qz in args.quantizers.split(","):
            reset(); t0 = time.perf_counter()
            q = bitalloc.apply(task.model, a, qz, calib=task.calib, forward=task.loss, **QUANT)
            rep = check_budgets(q.packed(), task.model, a)
            ev = dict(units=prof.n_units, seconds_apply=round(time.perf_counter() - t0, 1), budget_ok=rep.ok,
                      packed_avg_bits=rep.totals["avg_bits"], with_overhead=rep.totals["avg_bits_with_overhead"],
                      **task.quality(task.model))
            del q
            out[f"3.25|fisher-{gran}|{qz}|calib {args.calib}"] = ev
            print(gran, qz, ev, flush=True)
            atomic_write(args.out, dumps(out))
