"""`bitalloc mcu plan`: the kernels a device must time for a profile (never imports torch)."""
from __future__ import annotations

import sys

from bitalloc.cli._common import add_profile_arg


def add_parser(sub) -> None:
    s = sub.add_parser("mcu", help="on-device profiling flow: plan the kernels to measure")
    mcu = s.add_subparsers(dest="mcu_cmd", required=True, parser_class=sub._parser_class)
    p = mcu.add_parser("plan", help="write the deduplicated list of kernels to time on the device")
    add_profile_arg(p)
    p.add_argument("--device", required=True, help="target device (bitalloc/data/devices), e.g. cortex-m7")
    p.add_argument("--out", required=True, help="plan CSV to write")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(func=run_plan)


def run_plan(args) -> int:
    from bitalloc.fileio import check_writable
    from bitalloc.hwcost.device.devices import load_device
    from bitalloc.hwcost.device.plan import make_plan, write_plan

    from bitalloc.cli._common import load_profile

    device = load_device(args.device)
    check_writable(args.out, args.force)
    profile = load_profile(args.profile)
    entries = make_plan(profile, device)
    header = {"device": device.name, "profile": args.profile or "(embedded)", "model": profile.meta.get("model", "")}
    write_plan(args.out, header, entries, args.force)
    cells = sum(len(e.layers) for e in entries)
    skipped = [f for f in profile.formats if device.kernel_for(f) is None]
    print(f"wrote {args.out}: {len(entries)} kernels to time on {device.name} for {cells} layer-candidate cells"
          + (f"; no kernel for {', '.join(skipped)} (infeasible)" if skipped else ""), file=sys.stderr)
    return 0
