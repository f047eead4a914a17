"""`bitalloc measure`: time a plan's kernels with a runner and write a device profile."""
from __future__ import annotations

import sys

# runner options given on the command line (None: not given, the runner's default)
RUNNER_OPTIONS = ("port", "baud", "timeout", "retries", "timer")


def add_parser(sub) -> None:
    s = sub.add_parser("measure", help="time a plan's kernels on a device (runner) and write a device profile")
    s.add_argument("--plan", required=True, help="plan CSV from `bitalloc mcu plan`")
    s.add_argument("--runner", default="host-cpu", help="host-cpu (this machine, torch) | serial (a board running firmware/)")
    s.add_argument("--device", default=None, metavar="NAME",
                   help="device name written in the profile (#device; default: the runner's device); a name "
                        "bitalloc has no spec of is fine (a complete profile, or --target-spec when solving)")
    s.add_argument("--out", required=True, help="device profile to write (.csv, or .json); rows go to <out>.partial.csv "
                   "as they are measured, and a rerun resumes from there")
    s.add_argument("--warmup", type=int, default=3, help="untimed calls per kernel (3)")
    s.add_argument("--repeats", type=int, default=20, help="timed calls per kernel; the median is kept (20)")
    s.add_argument("--port", help="serial: /dev/ttyACM0, COM3, a pyserial URL (socket://host:port), or qemu[:fw.elf] "
                   "(run firmware/ under qemu-system-arm -M mps2-an386 -icount shift=0)")
    s.add_argument("--baud", type=int, help="serial: baud rate (115200)")
    s.add_argument("--timeout", type=float, help="serial: seconds to wait for one kernel's result (60)")
    s.add_argument("--retries", type=int, help="serial: resends of a request before giving up (3)")
    s.add_argument("--timer", help="serial: record this timer instead of the board's (qemu-icount for a QEMU you started)")
    s.add_argument("--force", action="store_true", help="overwrite --out (and discard a partial run made with other settings)")
    s.set_defaults(func=run)


def run(args) -> int:
    from bitalloc.errors import bad
    from bitalloc.fileio import check_writable
    from bitalloc.hwcost.device.measure import measure_plan, plan_sha256
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
    options = {k: getattr(args, k) for k in RUNNER_OPTIONS if getattr(args, k) is not None}
    if cls.device is None:  # a runner for any device of its kind measures the plan's
        options["device"] = header["device"]
    elif header["device"] != cls.device:
        raise bad("--runner", args.runner, f"measures device {cls.device!r} but plan {args.plan!r} is for "
                  f"{header['device']!r} (make the plan with --device {cls.device})")
    if args.runner == "serial" and "port" not in options:
        raise bad("--port", None, "the serial runner needs the board's port (/dev/ttyACM0, socket://host:port, qemu)")
    if args.device is not None and not args.device.strip():
        raise bad("--device", args.device, "must be a non-empty device name")
    runner = RUNNERS.create(args.runner, warmup=args.warmup, repeats=args.repeats, **options)
    update, close = progress_bar(f"{args.runner}: kernels")
    try:
        res = measure_plan(runner, entries, args.out, force=args.force, plan_id=plan_sha256(args.plan), update=update,
                           device=args.device.strip() if args.device else None,
                           log=lambda s: print(s, file=sys.stderr))
    finally:
        close()
    print(f"wrote {args.out}: {len(entries)} kernels ({res.resumed} from an earlier partial run), {len(res.rows)} rows ("
          + ", ".join(f"{n} {s}" for s, n in sorted(res.statuses.items())) + ")", file=sys.stderr)
    return 0

