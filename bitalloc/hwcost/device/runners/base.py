"""Runner: times one plan entry on its device and says how it went."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


class Unsupported(Exception):
    """The runner has no kernel for this plan entry on its device: recorded as an `unsupported`
    row (the solver then never picks that candidate), not as an error."""


@dataclass(frozen=True)
class Timing:
    """seconds: the statistic `stat` over `n` timed calls (None unless status is ok);
    status: ok | unsupported | oom | error; note: why, when not ok; cycles: the same statistic
    in the device's clock cycles, when the runner counts cycles (the profile row is then a
    `cycles` row)."""

    seconds: float | None
    status: str = "ok"
    n: int | None = None
    stat: str = "median"
    note: str = ""
    cycles: float | None = None


class Runner(ABC):
    """device: the device name written in the profile header (a bitalloc/data/devices spec).
    warmup / repeats: untimed and timed calls per kernel. A runner whose `device` is None
    measures any device of its kind: `bitalloc measure` passes it the plan's (`device=`)."""

    name = "runner"
    device = ""
    metric = "latency"  # what its rows hold: latency (Timing.seconds, in ms) or cycles (Timing.cycles)

    def __init__(self, warmup: int = 3, repeats: int = 20):
        from bitalloc.errors import bad

        for f, v in (("warmup", warmup), ("repeats", repeats)):
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if f == "warmup" else 1):
                raise bad(f"--{f}", v, "must be an integer >= " + ("0" if f == "warmup" else "1"))
        self.warmup, self.repeats = warmup, repeats

    @abstractmethod
    def header(self) -> dict:
        """#key=value lines of the device profile: device, core, clock_hz, runtime, timer, warmup, repeats."""

    @abstractmethod
    def time(self, entry) -> Timing:
        """Time one plan entry (bitalloc/hwcost/plan.py PlanEntry)."""

    def summary(self) -> dict:
        """Header fields known only at the end of a run (link statistics); {} by default."""
        return {}

    def close(self) -> None:
        """Release what the runner holds (threads setting, device handles)."""
