"""Estimator: scores every unit at every candidate and returns a Profile (DESIGN.md)."""
from __future__ import annotations

DEFAULT_BITS = (2, 3, 4, 5, 6, 8)


class Estimator:
    """Subclasses set `name`, `passes` (forward/backward passes over the calibration data it
    costs, as text) and implement `estimate(...) -> Profile`, recording settings and cost in
    `profile.meta`."""

    name = "estimator"
    passes = ""

    def estimate(self, *args, **kwargs):
        raise NotImplementedError
