"""Run the measurement firmware under QEMU (`qemu-system-arm -M mps2-an386 -icount shift=0`)
with its UART on a pseudo-terminal, for CI and for trying the flow without a board.

With `-icount shift=0` QEMU advances its virtual clock by 2^0 ns per guest instruction, so the
board's timers count instructions, not cycles: a SysTick tick at `clock_hz` is
1e9 / (2^shift · clock_hz) instructions. The serial runner records `timer=qemu-icount` and
converts the firmware's counts to instructions (`icount_instructions`)."""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from bitalloc.errors import BitallocError

MACHINE = "mps2-an386"
BOARD_DIR = "mps2-an386"


def firmware_dir() -> Path:
    """firmware/ of this checkout (the firmware is not part of the installed package)."""
    return Path(__file__).resolve().parents[3] / "firmware"


def firmware_elf(board: str = BOARD_DIR) -> Path:
    return firmware_dir() / "build" / board / "fw.elf"


def missing_tools() -> list[str]:
    """Tools of the QEMU flow not on PATH (make, the Arm toolchain, qemu-system-arm)."""
    return [t for t in ("make", "arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(t) is None]


def build_firmware(board: str = BOARD_DIR) -> Path:
    """`make -C firmware BOARD=board`; the ELF. Raises BitallocError with make's output tail."""
    miss = [t for t in ("make", "arm-none-eabi-gcc") if shutil.which(t) is None]
    if miss:
        raise BitallocError(f"building the firmware needs {', '.join(miss)}: apt-get install -y make gcc-arm-none-eabi "
                            "libnewlib-arm-none-eabi")
    r = subprocess.run(["make", "-C", str(firmware_dir()), f"BOARD={board}"], capture_output=True, text=True)
    if r.returncode != 0:
        raise BitallocError(f"firmware build failed: {(r.stdout + r.stderr).strip()[-800:]}")
    return firmware_elf(board)


def icount_instructions(cycles: float, clock_hz: float, shift: int = 0) -> float:
    """Guest instructions behind `cycles` timer counts at `clock_hz` under `-icount shift`."""
    return cycles * 1e9 / (2 ** shift * clock_hz)


class QemuBoard:
    """A running `qemu-system-arm` with the firmware; `port` is the pty its UART is on.
    Use as a context manager (or call stop())."""

    def __init__(self, elf=None, machine: str = MACHINE, shift: int = 0, start_timeout: float = 10.0):
        exe = shutil.which("qemu-system-arm")
        if exe is None:
            raise BitallocError("the qemu port needs qemu-system-arm: apt-get install -y qemu-system-arm")
        self.elf = Path(elf) if elf else firmware_elf()
        if not self.elf.is_file():
            raise BitallocError(f"firmware {str(self.elf)!r} not found: build it with `make -C {firmware_dir()}`")
        self.shift = shift
        self.machine = machine
        self.command = [exe, "-M", machine, "-nographic", "-monitor", "none", "-icount", f"shift={shift}",
                        "-kernel", str(self.elf), "-serial", "pty"]
        self.version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.port = self._find_pty(start_timeout)

    def _find_pty(self, timeout: float) -> str:
        end = time.monotonic() + timeout
        seen = []
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    break
                continue
            seen.append(line.strip())
            m = re.search(r"char device redirected to (\S+)", line)
            if m:
                threading.Thread(target=self._drain, daemon=True).start()  # never let a full pipe stall QEMU
                return m.group(1)
        self.stop()
        raise BitallocError(f"qemu-system-arm did not open a serial pty: {' | '.join(seen)[-400:]}")

    def _drain(self) -> None:
        try:
            for _ in self.proc.stdout:
                pass
        except (OSError, ValueError):
            pass

    def describe(self) -> str:
        return f"{self.version} -M {self.machine} -icount shift={self.shift}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
