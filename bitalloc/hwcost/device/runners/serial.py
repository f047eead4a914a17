"""serial: times plan kernels on a microcontroller running the bitalloc measurement firmware
(firmware/, docs/mcu-firmware.md), over its UART with the line protocol of protocol.py
(docs/mcu-protocol.md).

Per plan row the host sends the op, shape, bits, a seed, warmup/repeats and the CRC-32 of the
int8 output it computed itself for that seed (synthetic.py); the board builds the same
synthetic layer, times `repeats` calls after `warmup` with its cycle timer (DWT CYCCNT, else
SysTick), checks its output against the host's checksum and answers the median cycles. Rows the
firmware has no kernel for come back `unsupported`, layers larger than its arena `oom`.

`port`: a serial device (/dev/ttyACM0, COM3), any pyserial URL (socket://host:port,
rfc2217://...), or `qemu` / `qemu:path/to/fw.elf`: start the firmware under
`qemu-system-arm -M mps2-an386 -icount shift=0` and talk to it on a pty; the profile then says
`timer=qemu-icount` and its cycles are guest instruction counts (not real cycles).
"""
from __future__ import annotations

import zlib

from bitalloc.errors import BitallocError, bad
from bitalloc.hwcost.device.protocol import PROTO_VERSION, Link, LinkError
from bitalloc.hwcost.device.runners import register
from bitalloc.hwcost.device.runners.base import Runner, Timing
from bitalloc.hwcost.device.synthetic import SUPPORTED_W_BITS, Layer

IDENTITY = ("board", "core", "fw", "clock_hz")
TIMERS = {"dwt": "dwt-cyccnt", "systick": "systick"}
QEMU_TIMER = "qemu-icount"


@register("serial")
class SerialRunner(Runner):
    device = None  # any MCU device spec: the plan's
    metric = "cycles"

    def __init__(self, warmup: int = 3, repeats: int = 20, *, port: str, device: str = "mps2-an386",
                 baud: int = 115200, timeout: float = 60.0, ack_timeout: float = 2.0, retries: int = 3,
                 timer: str | None = None, seed: int = 0):
        super().__init__(warmup, repeats)
        from bitalloc.hwcost.device.devices import load_device

        if load_device(device).klass != "mcu":
            raise bad("device", device, "the serial runner measures microcontrollers (a device spec of class mcu)")
        for f, v, lo in (("--baud", baud, 1), ("--retries", retries, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise bad(f, v, f"must be an integer >= {lo}")
        for f, v in (("--timeout", timeout), ("ack_timeout", ack_timeout)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise bad(f, v, "must be a number of seconds > 0")
        if repeats > 255:
            raise bad("--repeats", repeats, "the firmware times at most 255 repeats per row")
        if not isinstance(port, str) or not port:
            raise bad("--port", port, "a serial device (/dev/ttyACM0), a pyserial URL (socket://host:port) or qemu[:fw.elf]")
        self.device, self.port_name, self.seed, self.timer_override = device, port, seed, timer
        self.qemu = None
        if port == "qemu" or port.startswith("qemu:"):
            from bitalloc.hwcost.device.qemu import QemuBoard

            self.qemu = QemuBoard(port[5:] or None)
            port = self.qemu.port
        try:
            import serial
        except ImportError:
            self.close()
            raise BitallocError("the serial runner needs pyserial: pip install 'bitalloc[mcu]'") from None
        try:
            ser = serial.serial_for_url(port, baudrate=baud, timeout=0.05, write_timeout=5)
        except (serial.SerialException, ValueError, OSError) as e:
            self.close()
            raise bad("--port", self.port_name, f"cannot be opened ({e})") from None
        self.link = Link(ser, ack_timeout=ack_timeout, timeout=timeout, retries=retries)
        try:
            self.hello = self._handshake()
        except BaseException:  # never leave a QEMU behind
            self.close()
            raise
        self.clock_hz = float(self.hello["clock_hz"])
        self._row_resets = 0

    def _handshake(self) -> dict:
        link = self.link
        saved = link.ack_timeout, link.retries
        link.ack_timeout, link.retries = min(0.5, link.ack_timeout), max(link.retries, int(4 * link.ack_timeout) + 4)
        try:  # a board (or QEMU's pty) may drop what arrives before it is ready: ask often, briefly
            h = link.request("HELLO", {}, "HELLO", acked=False)
        finally:
            link.ack_timeout, link.retries = saved
        if h.get("proto") != str(PROTO_VERSION):
            raise LinkError(f"board on {self.port_name!r} speaks protocol {h.get('proto')!r}; this bitalloc speaks {PROTO_VERSION}")
        try:
            if float(h.get("clock_hz", "")) <= 0:
                raise ValueError
        except ValueError:
            raise LinkError(f"board on {self.port_name!r} reported clock_hz {h.get('clock_hz')!r}: expected a positive number") from None
        link.stats = type(link.stats)()  # boot chatter and handshake retries are not the run's
        return h

    @property
    def timer(self) -> str:
        if self.qemu is not None:
            return QEMU_TIMER
        return self.timer_override or TIMERS.get(self.hello.get("timer", ""), self.hello.get("timer", "unknown"))

    def header(self) -> dict:
        h = self.hello
        def num(k):  # the board's figures as numbers where they are
            v = h.get(k, "")
            return int(v) if v.isdigit() else v

        out = {"device": self.device, "core": h.get("core", ""), "clock_hz": num("clock_hz"),
               "runtime": f"bitalloc-fw {h.get('fw', '?')} (protocol {h.get('proto')})", "timer": self.timer,
               "warmup": self.warmup, "repeats": self.repeats, "board": h.get("board", ""),
               "flash_bytes": num("flash"), "sram_bytes": num("sram"), "fw_flash_bytes": num("fw_flash"),
               "fw_sram_bytes": num("fw_sram"), "arena_bytes": num("arena"), "seed": self.seed}
        if self.timer == QEMU_TIMER:
            out["emulator"] = self.qemu.describe() if self.qemu else "qemu (started by the user, -icount shift=0)"
            out["timer_note"] = ("cycles are guest instructions counted by QEMU -icount shift=0 (not real cycles); "
                                 "seconds assume one instruction per cycle at clock_hz")
        return out

    def summary(self) -> dict:
        return {"link": self.link.stats.text()}

    def row_seed(self, e) -> int:
        return zlib.crc32(f"{self.seed}:{e.op}:{e.shape_text()}:{e.w_bits}:{e.a_bits}".encode()) & 0xFFFFFFFF

    def _on_reset(self, hello: dict) -> None:
        changed = [k for k in IDENTITY if hello.get(k) != self.hello.get(k)]
        if changed:
            raise LinkError(f"after a reset a different board answers on {self.port_name!r} ("
                            + ", ".join(f"{k} {self.hello.get(k)!r} -> {hello.get(k)!r}" for k in changed) + ")")
        self._row_resets += 1

    def time(self, entry) -> Timing:
        if entry.op not in ("linear", "conv2d"):
            return Timing(None, "unsupported", note=f"op {entry.op}")
        seed = self.row_seed(entry)
        fields = {"id": entry.id, "op": entry.op, **entry.shape, "wbits": entry.w_bits, "abits": entry.a_bits,
                  "group": entry.group or 0, "seed": seed, "warmup": self.warmup, "repeats": self.repeats}
        expect = None
        layer = Layer(entry.op, entry.shape, entry.w_bits)
        arena = int(self.hello.get("arena") or 0)
        if entry.w_bits in SUPPORTED_W_BITS and entry.a_bits == 8 and not entry.group and layer.arena_bytes() <= arena:
            expect = f"{layer.checksum(seed):08x}"  # (a layer the arena cannot hold comes back oom: no reference needed)
            fields["expect"] = expect
        self._row_resets = 0
        try:
            f = self.link.request("RUN", fields, "RES", on_reset=self._on_reset)
        except LinkError:
            if self._row_resets > self.link.retries:
                return Timing(None, "error", note=f"the board reset {self._row_resets} times while running this row")
            raise
        status = f.get("status", "")
        if status not in ("ok", "unsupported", "oom", "error"):
            return Timing(None, "error", note=f"board answered status {status!r}")
        if status == "error" and f.get("note") == "checksum":
            return Timing(None, "error", note=f"output checksum: board {f.get('sum')} != host {expect}")
        if status != "ok":
            return Timing(None, status, note=f.get("note", ""))
        if expect is not None and f.get("sum") != expect:
            return Timing(None, "error", note=f"output checksum: board {f.get('sum')} != host {expect}")
        try:
            cycles, n = float(f["cycles"]), int(f["n"])
        except (KeyError, ValueError):
            return Timing(None, "error", note=f"malformed result {f}")
        if self.timer == QEMU_TIMER:
            from bitalloc.hwcost.device.qemu import icount_instructions

            cycles = icount_instructions(cycles, self.clock_hz, self.qemu.shift if self.qemu else 0)
        return Timing(cycles / self.clock_hz, "ok", n, cycles=cycles)

    def reset_board(self) -> None:
        """Ask the board to reset itself (RESET): tests and recovery."""
        self.link.request("RESET", {}, "ACK", acked=False)

    def close(self) -> None:
        link = getattr(self, "link", None)
        if link is not None:
            link.close()
        if self.qemu is not None:
            self.qemu.stop()
