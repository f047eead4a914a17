"""The serial runner and its line protocol against a fake board: a Python peer on a pty that
speaks the firmware's protocol (computing the real output checksum with synthetic.py) and
misbehaves on cue: garbage lines, a dropped request (timeout), a corrupted line, a reset mid-run,
a wrong output checksum, a board that stops answering (the run resumes from the partial file).
Then the profile it writes is solved with latency / flash / SRAM budgets and the allocation is
confirmed by brute force."""
from __future__ import annotations

import itertools
import os
import select
import threading
import tty
import zlib

import numpy as np
import pytest

pytest.importorskip("serial")

from bitalloc import Allocation, Profile  # noqa: E402
from bitalloc.errors import BitallocError  # noqa: E402
from bitalloc.hwcost.device.measure import measure_plan, partial_path  # noqa: E402
from bitalloc.hwcost.device.plan import make_plan, read_plan, write_plan  # noqa: E402
from bitalloc.hwcost.device.protocol import LinkError, decode, encode  # noqa: E402
from bitalloc.hwcost.device.synthetic import Layer, xorshift32  # noqa: E402

HELLO = {"proto": "1", "fw": "fake-1", "board": "fake-board", "core": "cortex-m4", "clock_hz": "25000000",
         "timer": "dwt", "flash": "1048576", "sram": "196608", "fw_flash": "7000", "fw_sram": "12000", "arena": "180000"}
CYCLES_PER_MAC = {8: 4, 4: 6, 2: 5}


class FakeBoard:
    """A board on the master side of a pty. `script` maps the n-th RUN request (1-based, retries
    counted) to a misbehaviour: drop | garbage | reset | badcrc | badsum | dead (stop answering)."""

    def __init__(self, script: dict | None = None, hello: dict | None = None):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.script, self.hello = dict(script or {}), dict(hello or HELLO)
        self.runs = 0            # RUN lines received
        self.executed: list[str] = []  # plan ids actually run (not answered from the cache)
        self.last = None         # (seq, RES line) cache, as the firmware keeps it
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def send(self, cmd, fields, corrupt=False):
        line = encode(cmd, fields)
        if corrupt:
            line = line.replace(b"status=", b"statuz=")
        os.write(self.master, line)

    def _serve(self):
        buf = b""
        while not self.stop_ev.is_set():
            r, _, _ = select.select([self.master], [], [], 0.05)
            if not r:
                continue
            try:
                buf += os.read(self.master, 4096)
            except OSError:
                return
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self._handle(line)

    def _handle(self, line):
        msg = decode(line)
        if msg is None:
            self.send("NAK", {"seq": 0, "reason": "crc"})
            return
        cmd, f = msg
        if cmd == "HELLO":
            self.send("HELLO", {"seq": f["seq"], **self.hello})
            return
        if cmd != "RUN":
            self.send("NAK", {"seq": f["seq"], "reason": "unknown_command"})
            return
        self.runs += 1
        act = self.script.get(self.runs, "dead" if self.script.get("dead_after", 1e9) < self.runs else None)
        if act in ("drop", "dead"):
            return
        if act == "reset":  # the board restarts instead of answering: cache lost, boot HELLO
            self.last = None
            self.send("HELLO", {"boot": 1, **self.hello})
            return
        self.send("ACK", {"seq": f["seq"]})
        if act == "garbage":
            os.write(self.master, b"\x00\xffboot noise\r\nDEBUG x=1\n*12\nRES seq=1*00000000\n")
        if self.last is None or self.last[0] != f["seq"]:
            self.last = (f["seq"], self._run(f, bad_sum=act == "badsum"))
        self.send("RES", self.last[1], corrupt=act == "badcrc")

    def _run(self, f, bad_sum=False):
        self.executed.append(f["id"])
        op, wb = f["op"], int(f["wbits"])
        keys = ("pos", "in", "out") if op == "linear" else ("n", "c", "h", "w", "k", "kh", "kw", "stride", "pad", "groups")
        shape = {k: int(f[k]) for k in keys}
        if wb not in CYCLES_PER_MAC or f["abits"] != "8":
            return {"seq": f["seq"], "id": f["id"], "status": "unsupported", "note": "bits"}
        layer = Layer(op, shape, wb)
        total = layer.rows * layer.row_len * (shape["pos"] if op == "linear" else 64)
        s = layer.checksum(int(f["seed"])) ^ (1 if bad_sum else 0)
        status = "error" if f"{s:08x}" != f["expect"] else "ok"
        res = {"seq": f["seq"], "id": f["id"], "status": status}
        if status == "error":
            res["note"] = "checksum"
        return {**res, "cycles": total * CYCLES_PER_MAC[wb] + 1000, "min": 0, "max": 0, "n": f["repeats"], "sum": f"{s:08x}"}

    def close(self):
        self.stop_ev.set()
        self.thread.join(2)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def board():
    boards = []

    def make(**kw):
        b = FakeBoard(**kw)
        boards.append(b)
        return b
    yield make
    for b in boards:
        b.close()


def small_profile() -> Profile:
    """Four linear layers (a chain), candidates 2 / 4 / 8 bits (mps2-an386 has s2, s4, s8)."""
    rows, cols = [32, 48, 24, 10], [16, 32, 48, 24]
    S = np.array([[4.0, 0.9, 0.01], [9.0, 1.5, 0.02], [3.0, 0.4, 0.01], [6.0, 2.0, 0.05]])
    n = [r * c for r, c in zip(rows, cols)]
    return Profile.from_columns(["l1", "l2", "l3", "l4"], n, [2, 4, 8], S, rows=rows, cols=cols, macs=n)


def runner_for(port, **kw):
    from bitalloc.hwcost.device.runners.serial import SerialRunner

    opts = dict(warmup=1, repeats=3, port=port, device="mps2-an386", timeout=2.0, ack_timeout=1.0, retries=3)
    opts.update(kw)
    return SerialRunner(**opts)


@pytest.fixture
def plan(tmp_path):
    from bitalloc.hwcost.device.devices import load_device

    p = tmp_path / "plan.csv"
    write_plan(p, {"device": "mps2-an386"}, make_plan(small_profile(), load_device("mps2-an386")))
    return p


def test_framing_round_trips_and_rejects_corruption():
    line = encode("RUN", {"seq": 3, "id": "k001", "op": "linear"})
    assert line.endswith(b"\n") and decode(line[:-1]) == ("RUN", {"seq": "3", "id": "k001", "op": "linear"})
    assert decode(line[:-1].replace(b"k001", b"k002")) is None  # CRC catches a changed byte
    assert decode(b"RUN seq=3") is None and decode(b"\xff\xfe*00000000") is None and decode(b"RUN x*zzzzzzzz") is None
    with pytest.raises(ValueError):
        encode("RUN", {"id": "a*b"})


def test_synthetic_generator_and_reference_kernel():
    # xorshift32 from state seed ^ 0x9E3779B9, the first outputs computed by hand
    s = 0x9E3779B9
    want = []
    for _ in range(3):
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        want.append(s)
    assert xorshift32(0, 3).tolist() == want
    # conv2d with groups and stride equals a direct loop over the same synthetic data
    lay = Layer("conv2d", {"n": 1, "c": 4, "h": 5, "w": 6, "k": 6, "kh": 3, "kw": 2, "stride": 2, "pad": 1, "groups": 2}, 4)
    w, x, bias, mult = lay.data(11)
    assert w.min() >= -8 and w.max() <= 7 and x.min() >= -128 and x.max() <= 127
    y = lay.output(11)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    wk = w.reshape(6, 2, 3, 2)
    for o in range(6):
        g = o // 3
        for oy in range(y.shape[2]):
            for ox in range(y.shape[3]):
                acc = bias[o] + int((xp[0, 2 * g:2 * g + 2, 2 * oy:2 * oy + 3, 2 * ox:2 * ox + 2] * wk[o]).sum())
                q = (acc * int(mult[o]) + (1 << (lay.shift - 1))) >> lay.shift
                assert y[0, o, oy, ox] == max(-128, min(127, q))
    assert lay.checksum(11) == zlib.crc32(y.tobytes())


def test_runner_measures_a_plan_through_garbage_timeouts_and_corrupted_lines(board, plan, tmp_path):
    b = board(script={1: "garbage", 3: "drop", 5: "badcrc"})
    _, entries = read_plan(plan)
    out = tmp_path / "prof.json"
    res = measure_plan(runner_for(b.port), entries, out)
    from bitalloc.hwcost.device.device_profile import DeviceProfile

    dp = DeviceProfile.load(out)
    assert res.statuses == {"ok": len(entries)} and len(dp.rows) == len(entries)
    for e, r in zip(entries, dp.rows):  # the fake board's cycles, exactly
        assert r.metric == "cycles" and r.value == e.macs * CYCLES_PER_MAC[e.w_bits] + 1000 and r.n == 3
    h = dp.header
    assert (h["device"], h["board"], h["core"], h["clock_hz"], h["timer"]) == ("mps2-an386", "fake-board", "cortex-m4", "25000000", "dwt-cyccnt")
    assert (h["warmup"], h["repeats"], h["sram_bytes"], h["flash_bytes"]) == ("1", "3", "196608", "1048576")
    # the garbage was skipped, the dropped request and the corrupted reply were resent; the
    # retried request after the corrupted reply was answered from the board's cache, not rerun
    link = dict(kv.split("=") for kv in h["link"].split())
    assert int(link["garbage"]) >= 4 and int(link["retries"]) >= 2  # (more only if this machine stalls the peer)
    assert sorted(b.executed) == sorted(e.id for e in entries)
    assert not partial_path(out).exists()


def test_reset_mid_run_resends_the_row_and_a_checksum_mismatch_is_an_error_row(board, plan, tmp_path):
    b = board(script={2: "reset", 4: "badsum"})
    _, entries = read_plan(plan)
    out = tmp_path / "prof.csv"
    res = measure_plan(runner_for(b.port), entries, out)
    from bitalloc.hwcost.device.device_profile import DeviceProfile

    dp = DeviceProfile.load(out)
    assert "resets=1" in dp.header["link"]
    bad = [r for r in dp.rows if r.status != "ok"]
    assert len(bad) == 1 and bad[0].status == "error" and bad[0].value is None
    assert res.statuses == {"ok": len(entries) - 1, "error": 1}
    # the request the reset swallowed was sent again and run once; every row ran once
    assert b.runs == len(entries) + 1 and b.executed == [e.id for e in entries]


def test_a_board_that_keeps_resetting_on_one_row_gives_an_error_row(board, plan, tmp_path):
    b = board(script={n: "reset" for n in range(2, 6)})
    _, entries = read_plan(plan)
    r = runner_for(b.port)
    t0 = r.time(entries[0])
    t1 = r.time(entries[1])
    r.close()
    assert t0.status == "ok" and t1.status == "error" and "reset 4 times" in t1.note


def test_a_different_board_after_a_reset_stops_the_run(board, plan):
    b = board()
    _, entries = read_plan(plan)
    r = runner_for(b.port)
    b.hello["fw"] = "other-2"
    b.script[1] = "reset"
    with pytest.raises(LinkError, match="different board"):
        r.time(entries[0])
    r.close()


def test_a_run_that_stops_keeps_its_rows_and_the_rerun_resumes(board, plan, tmp_path, capsys):
    from bitalloc.cli.app import main

    dead = board(script={"dead_after": 3})
    out = tmp_path / "prof.json"
    argv = ["measure", "--runner", "serial", "--plan", str(plan), "--out", str(out), "--warmup", "1", "--repeats", "3",
            "--timeout", "1", "--retries", "1"]
    rc = main(argv + ["--port", dead.port])
    err = capsys.readouterr().err
    assert rc == 2 and "got no answer" in err and "3 of 12 kernels kept" in err and not out.exists()
    part = partial_path(out)
    from bitalloc.hwcost.device.device_profile import DeviceProfile

    kept = DeviceProfile.load(part)  # a partial run is itself a loadable device profile
    assert len(kept.rows) == 3 and dead.executed == [e.id for e in read_plan(plan)[1][:3]]
    good = board()
    assert main(argv + ["--port", good.port]) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "3 from an earlier partial run" in err
    assert good.executed == [e.id for e in read_plan(plan)[1][3:]]  # only the rest was measured
    assert len(DeviceProfile.load(out).rows) == 12 and not part.exists()
    # a partial file from another plan is not mixed in
    other = tmp_path / "x.json"
    partial_path(other).write_text("#device=mps2-an386\n#plan_sha256=0\n")
    with pytest.raises(BitallocError, match="other settings.*plan_sha256 '0' vs 'abc'"):
        measure_plan(runner_for(board().port), read_plan(plan)[1], other, plan_id="abc")
    assert partial_path(other).exists() and not other.exists()


def test_cli_refuses_bad_serial_options_in_one_line(plan, tmp_path, capsys):
    from bitalloc.cli.app import main

    out = tmp_path / "m.csv"
    for argv, msg in ((["--runner", "serial"], "--port"), (["--runner", "serial", "--port", "/dev/nonexistent-tty"], "cannot be opened"),
                      (["--runner", "serial", "--port", "qemu:/nonexistent.elf"], "not found"),
                      (["--runner", "serial", "--port", "x", "--repeats", "300"], "255")):
        rc = main(["measure", "--plan", str(plan), "--out", str(out), *argv])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and err.count("\n") == 1, err
    assert not out.exists()


def test_measured_profile_solves_and_brute_force_confirms(board, plan, tmp_path, capsys):
    """solve with latency / flash / SRAM budgets on the runner's profile; enumerate all 3^4
    allocations with the same cost models and the measured rows: the ILP's is optimal."""
    from bitalloc.cli.app import main
    from bitalloc.hwcost.device.device_profile import DeviceProfile
    from bitalloc.hwcost.latency import LatencyCost
    from bitalloc.hwcost.mcu import McuCost

    prof = tmp_path / "p.json"
    profile = small_profile()
    profile.save(prof)
    out = tmp_path / "prof.json"
    b = board()
    assert main(["measure", "--runner", "serial", "--port", b.port, "--plan", str(plan), "--out", str(out),
                 "--warmup", "1", "--repeats", "3"]) == 0
    dp = DeviceProfile.load(out)
    cycles = {(r.layer, r.w_bits): r.value for r in dp.rows}
    lat, flash, sram = LatencyCost(device_profile=dp, unit="ms"), McuCost("flash", unit="b", device_profile=dp), \
        McuCost("sram", unit="b", device_profile=dp)
    int8 = np.full(4, 2)
    budgets = {"latency_ms": 1.15 * sum(cycles[(n, 8)] for n in profile.names) / 25e6 * 1e3,
               "flash_kb": 0.7 * flash.total(profile, int8) / 1024, "sram_kb": 0.115}
    cons = [a for r, v in budgets.items() for a in ("--constraint", f"{r}<={v:.6f}")]
    alloc_path = tmp_path / "a.json"
    assert main(["solve", "--profile", str(prof), "--device-profile", str(out), *cons, "--out", str(alloc_path)]) == 0
    alloc = Allocation.load(alloc_path)
    best, best_choice, best_free = np.inf, None, np.inf
    for ch in itertools.product(range(3), repeat=4):
        ch = np.array(ch)
        ms = sum(cycles[(n, profile.bits[k])] for n, k in zip(profile.names, ch)) / 25e6 * 1e3
        assert ms == pytest.approx(lat.total(profile, ch), rel=1e-9)  # latency = the measured rows
        if ms <= budgets["latency_ms"] * (1 + 1e-9) and flash.total(profile, ch) / 1024 <= budgets["flash_kb"] * (1 + 1e-9):
            obj = profile.sensitivity[np.arange(4), ch].sum()
            best_free = min(best_free, obj)
            if sram.total(profile, ch) / 1024 <= budgets["sram_kb"] * (1 + 1e-9) and obj < best:
                best, best_choice = obj, ch
    assert best_choice is not None and len(set(best_choice.tolist())) > 1  # a mixed allocation
    assert best_free < best  # the SRAM budget (one unpacked scratch row) changes the answer
    assert alloc.status == "optimal" and alloc.objective == pytest.approx(best, rel=1e-9)
    assert alloc.choice(profile).tolist() == best_choice.tolist() and sorted(budgets) == sorted(alloc.budgets)
