"""`bitalloc export`: write an allocation for a downstream tool (GGUF, llama.cpp, GPTQ, HQQ, JSON)."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    s = sub.add_parser("export", help="write an allocation for a downstream tool",
                       description="Formats: gguf (a mixed-precision GGUF), llama.cpp (llama-quantize "
                                   "--tensor-type-file), gptq (GPTQModel QuantizeConfig with dynamic), "
                                   "hqq (hqq per-layer configs), hqq-dynamic (transformers HqqConfig dynamic_config), "
                                   "json (name -> bits).")
    s.add_argument("--allocation", required=True, help="allocation JSON (bitalloc solve --out)")
    s.add_argument("--format", required=True, help="gguf, llama.cpp, gptq, hqq, hqq-dynamic or json")
    s.add_argument("--out", required=True, help="file to write")
    s.add_argument("--model", default=None, help="model the allocation is for (smollm2, minilm, digits-cnn): unit names "
                   "are checked against it; gguf starts from its GGUF (default smollm2)")
    s.add_argument("--source", default=None, help="gguf / llama.cpp: a GGUF file to start from instead of the model's")
    s.add_argument("--type-map", default=None, metavar="BITS=TYPE,...", help="gguf / llama.cpp: GGML type overrides, e.g. 4=Q4_1")
    s.add_argument("--imatrix", default=None, metavar="FILE", help="gguf: llama.cpp imatrix (.gguf or .dat, e.g. from "
                   "bitalloc profile --imatrix) weighting the K-quant encoders' scale search")
    s.add_argument("--group-size", type=int, default=None, help="gptq (default 128) / hqq (default 64): weights per scale")
    s.add_argument("--round-up", action="store_const", const=True, default=None,
                   help="gptq / hqq: bit-widths the format lacks go to the next one up (noted) instead of an error")
    s.add_argument("--fused", default=None, help="gptq: require (default), max or split for q/k/v and gate/up pieces")
    s.add_argument("--merge", default=None, help="hqq-dynamic: refuse (default) or max when layers of a type differ")
    s.add_argument("--force", action="store_true", help="overwrite --out")
    s.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=run)


_OPTIONS = ("model", "source", "type_map", "group_size", "round_up", "fused", "merge", "imatrix")


def run(args) -> int:
    from bitalloc.export import FORMATS, get_exporter
    from bitalloc.fileio import check_writable

    FORMATS.get(args.format)
    if args.format in ("gguf", "llama.cpp") or args.model == "smollm2":
        from bitalloc.extras import require

        require("gguf", why=f"--format {args.format}" if args.format in ("gguf", "llama.cpp") else "--model smollm2")
    check_writable(args.out, args.force)
    options = {k: getattr(args, k) for k in _OPTIONS if getattr(args, k) is not None}
    bar = _LazyBar("encoding tensors")
    if args.format == "gguf":
        options["progress"] = bar
    exporter = get_exporter(args.format, **options)
    try:
        result = exporter.write(args.allocation, args.out, force=args.force)
    finally:
        bar.close()
    print(f"wrote {result.path} ({result.format}, {result.units} units)")
    for note in result.notes:
        print(f"  note: {note}")
    s = result.summary
    if "types" in s:
        types = ", ".join(f"{t} ×{n} ({s['bpw_by_type'][t]:g} bpw)" for t, n in s["types"].items())
        print(f"  tensor types: {types}")
        print(f"  allocated weights: {s['allocated_params']:,}; allocation {s['allocation_avg_bits']:.3f} bits/weight, "
              f"GGUF {s['gguf_avg_bpw']:.3f} bits/weight with block scales; file {s['bytes'] / 2**20:.3f} MiB "
              f"({s['bytes']:,} bytes), general.file_type {s.get('file_type')}")
    return 0


class _LazyBar:
    """A progress bar drawn from the first update on, so input errors print alone."""

    def __init__(self, desc: str):
        self.desc, self._update, self._close = desc, None, None

    def __call__(self, *args):
        if self._update is None:
            from bitalloc.cli._common import progress_bar

            self._update, self._close = progress_bar(self.desc)
        self._update(*args)

    def close(self):
        if self._close:
            self._close()
