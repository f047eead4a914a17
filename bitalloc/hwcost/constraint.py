"""Constraint: one budget on one cost model (`cost` total, in its user unit, <= `budget`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from bitalloc.errors import bad
from bitalloc.hwcost.base import CostModel


@dataclass(frozen=True)
class Constraint:
    """`cost` total (in its user unit) must stay <= `budget`."""

    cost: CostModel
    budget: float

    def __post_init__(self):
        b = self.budget
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b < 0:
            raise bad(f"budget for {self.cost.resource}", b, "must be a finite number >= 0")

    def spec(self) -> dict:
        """{resource, budget, cost: the cost model's CostSpec JSON}: what an Allocation stores."""
        return {"resource": self.cost.resource, "budget": float(self.budget), "cost": self.cost.spec().to_json()}

    @classmethod
    def from_spec(cls, d: dict) -> "Constraint":
        """The Constraint a `spec()` dict describes (its cost model rebuilt)."""
        from bitalloc.hwcost.base import CostModel

        return cls(CostModel.from_spec(d["cost"]), d["budget"])
