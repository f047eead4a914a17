"""`bitalloc measure`: time a plan's kernels with a runner and write a device profile CSV."""
from __future__ import annotations

import sys


def add_parser(sub) -> None:
    s = sub.add_parser("measure", help="time a plan's kernels on a device (runner) and write a device profile")
    s.add_argument("--plan", required=True, help="plan CSV from `bitalloc mcu plan`")
    s.add_argument("--runner", default="host-cpu", help="host-cpu (this machine, torch)")
    s.add_argument("--device", default=None, metavar="NAME",
                   help="device name written in the profile (#device; default: the runner's device); a name "
                        "bitalloc has no spec of is fine (a complete profile, or --target-spec when solving)")
    s.add_argument("--out", required=True, help="device profile CSV to write")
    s.add_argument("--warmup", type=int, default=3, help="untimed calls per kernel (3)")
    s.add_argument("--repeats", type=int, default=20, help="timed calls per kernel; the median is kept (20)")
    s.add_argument("--force", action="store_true", help="overwrite --out")
    s.set_defaults(func=run)


def run(args) -> int:
    from bitalloc.errors import bad
    from bitalloc.fileio import check_writable
    from bitalloc.hwcost.device.plan import read_plan
    from bitalloc.hwcost.device.runners import RUNNERS
    from bitalloc.cli._common import progress_bar

    cls = RUNNERS.get(args.runner)
    if args.runner == "host-cpu":
        from bitalloc.extras import require

        require("torch", why="--runner host-cpu")
    if args.warmup < 0 or args.warmup > 10**6:
        raise bad("--warmup", args.warmup, "must be from 0 to 1000000")
    if args.repeats < 1 or args.repeats > 10**6:
        raise bad("--repeats", args.repeats, "must be from 1 to 1000000")
    check_writable(args.out, args.force)
    header, entries = read_plan(args.plan)
    if header["device"] != cls.device:
        raise bad("--runner", args.runner, f"measures device {cls.device!r} but plan {args.plan!r} is for "
                  f"{header['device']!r} (make the plan with --device {cls.device})")
    runner = RUNNERS.create(args.runner, warmup=args.warmup, repeats=args.repeats)
    if args.device is not None and not args.device.strip():
        raise bad("--device", args.device, "must be a non-empty device name")
    rows, statuses = measure(runner, entries, *progress_bar(f"{args.runner}: kernels"))
    header = runner.header()
    if args.device is not None:
        header["device"] = args.device.strip()
    write_profile(args.out, header, rows, args.force)
    print(f"wrote {args.out}: {len(entries)} kernels, {len(rows)} rows ("
          + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) + ")", file=sys.stderr)
    return 0


def measure(runner, entries, update=None, close=None) -> tuple[list[dict], dict]:
    """Time every entry; one device-profile row per (entry, layer). Returns (rows, status counts)."""
    rows, statuses = [], {}
    try:
        for i, e in enumerate(entries):
            t = runner.time(e)
            statuses[t.status] = statuses.get(t.status, 0) + 1
            for layer in e.layers:
                rows.append({"layer": layer, "op": e.op, "macs": e.macs, "w_bits": e.w_bits, "a_bits": e.a_bits,
                             "group": e.group, "kernel": e.kernel, "metric": "latency",
                             "value": None if t.seconds is None else f"{t.seconds * 1e3:.6g}", "unit": "ms",
                             "stat": t.stat, "n": t.n, "status": t.status})
            if update:
                update(i + 1, len(entries))
    finally:
        runner.close()
        if close:
            close()
    return rows, statuses


def write_profile(path, header: dict, rows: list[dict], force: bool):
    from bitalloc.hwcost.device.device_profile import DeviceProfile

    return DeviceProfile.write(path, header, rows, force)
