"""The firmware under QEMU (`qemu-system-arm -M mps2-an386 -icount shift=0`, UART on a pty):
the protocol against the real firmware (checksums of strided / grouped / odd-sized layers,
unsupported and oom rows, a board reset mid-run), and the whole flow on digits-cnn:
plan → measure (serial runner) → solve with latency / flash / SRAM budgets → verify.

Needs make, gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm (Debian:
`apt-get install -y --no-install-recommends make gcc-arm-none-eabi libnewlib-arm-none-eabi
qemu-system-arm`); skipped with that message where they are missing."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("serial")

from bitalloc.hwcost.device.qemu import QemuBoard, build_firmware, missing_tools  # noqa: E402

MISSING = missing_tools()
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"{', '.join(MISSING)} not installed: apt-get install -y "
                                "--no-install-recommends make gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mcu_serial_flow.py"


@pytest.fixture(scope="module")
def firmware():
    return build_firmware()


def entry(id, op, shape, w_bits, a_bits=8, group=None):
    from bitalloc.hwcost.device.plan import PlanEntry

    return PlanEntry(id, op, shape, 0, w_bits, a_bits, group, f"s{w_bits}", f"int{w_bits}", ("x",))


def test_firmware_answers_the_protocol_under_qemu(firmware):
    from bitalloc.hwcost.device.runners.serial import SerialRunner

    with QemuBoard(firmware) as q:
        r = SerialRunner(warmup=1, repeats=3, port=q.port, device="mps2-an386", timer="qemu-icount", ack_timeout=2.0,
                         timeout=30.0)
        try:
            h = r.header()
            assert (h["board"], h["core"], h["clock_hz"], h["timer"]) == ("mps2-an386", "cortex-m4", 25000000, "qemu-icount")
            assert int(h["flash_bytes"]) == int(h["sram_bytes"]) == 4 << 20
            assert 0 < int(h["fw_flash_bytes"]) < 64 << 10 and int(h["arena_bytes"]) > 4_000_000
            assert "not real cycles" in h["timer_note"]
            conv = {"n": 2, "c": 6, "h": 7, "w": 9, "k": 4, "kh": 3, "kw": 2, "stride": 2, "pad": 1, "groups": 2}
            rows = [entry("a", "conv2d", conv, 4), entry("b", "conv2d", {**conv, "groups": 1, "c": 3, "kw": 3}, 2),
                    entry("c", "linear", {"pos": 3, "in": 13, "out": 5}, 2), entry("d", "linear", {"pos": 2, "in": 7, "out": 3}, 4),
                    entry("e", "linear", {"pos": 1, "in": 64, "out": 16}, 8)]
            for e in rows:  # the board's output checksum equals the host's (else status error)
                from bitalloc.hwcost.device.synthetic import Layer

                t = r.time(e)
                assert t.status == "ok", (e.id, t.note)
                assert Layer(e.op, e.shape, e.w_bits).arena_bytes() < 4096
                assert t.cycles > 0 and t.cycles % 40 == 0 and t.n == 3  # SysTick at 25 MHz = 40 instructions
            assert r.time(entry("f", "linear", {"pos": 1, "in": 8, "out": 8}, 3)).status == "unsupported"
            assert r.time(entry("g", "linear", {"pos": 1, "in": 8, "out": 8}, 8, group=32)).status == "unsupported"
            big = r.time(entry("h", "linear", {"pos": 1, "in": 4096, "out": 4096}, 8))
            assert big.status == "oom" and big.note == "arena"
            assert Layer("linear", {"pos": 1, "in": 4096, "out": 4096}, 8).arena_bytes() == 16818176  # the board's `need`
            r.link.port.write(b"RUN seq=99 id=x op=linear*00000000\n")  # a corrupted line: the board NAKs it
            assert r.time(rows[-1]).status == "ok" and r.link.stats.naks == 1
            r.reset_board()  # a real reset (SYSRESETREQ): the next request meets the boot HELLO and is resent
            t = r.time(rows[-1])
            assert t.status == "ok" and r.link.stats.resets == 1
        finally:
            r.close()


def test_digits_cnn_flow_against_qemu(tmp_path, firmware, capsys):
    spec = importlib.util.spec_from_file_location("mcu_serial_flow", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(str(tmp_path), repeats=2, warmup=1, samples=32, build=False)
    from bitalloc import Allocation, Profile
    from bitalloc.hwcost.device.device_profile import DeviceProfile

    dp = DeviceProfile.load(res["measured"])
    assert dp.header["timer"] == "qemu-icount" and "icount shift=0" in dp.header["emulator"]
    assert {r.status for r in dp.rows} == {"ok"} and len(dp.rows) == 12 and all(r.metric == "cycles" for r in dp.rows)
    profile, alloc = Profile.load(res["profile"]), Allocation.load(res["allocation"])
    cyc = {(r.layer, r.w_bits): r.value for r in dp.rows}
    ms = sum(cyc[(s, b)] for s, b in alloc.bits.items()) / 25e6 * 1e3  # from the measured rows directly
    assert ms == pytest.approx(alloc.totals["latency_ms"], rel=1e-9) and ms <= alloc.budgets["latency_ms"]
    for r in ("latency_ms", "flash_kb", "sram_kb"):
        assert res["totals"][r] <= res["budgets"][r] * (1 + 1e-9)
    assert min(alloc.bits.values()) < 8  # the flash budget (half of int8) forces sub-byte weights
    assert res["verify_ok"]
    out = capsys.readouterr().out
    assert "NO" not in out and "accuracy" in out
