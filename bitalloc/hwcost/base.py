"""CostModel: what one candidate of one unit costs in one resource."""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod

import numpy as np


class CostModel(ABC):
    """A named resource with a unit.

    `costs(profile) -> C: (N, K)` float64, the cost of unit n at candidate k in base units
    (bits, cycles, ...). `scale(profile)` converts a user budget to base units
    (cap = budget · scale), e.g. total parameters for an average in bits per weight.
    `feasible(profile) -> (N, K) bool | None`: candidates with no kernel on the target.
    `additive` is False for resources that are not a sum over units (peak SRAM): their total is
    the max over `rows(profile)`, each row a sum over a subset of units (one liveness point), so
    `total <= cap` is exactly one linear constraint per row. Solvers that only handle sums refuse
    those.
    """

    name = "cost"
    resource = "cost"
    unit = ""
    additive = True

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        try:  # the constructor options, for spec(); a bad call fails in __init__ with its own message
            bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
            self._init_options = {k: v for k, v in list(bound.arguments.items())[1:]}
        except TypeError:
            self._init_options = {}
        return self

    def spec(self):
        """This model as data (bitalloc.hwcost.spec.CostSpec): registered name, options, device,
        device-profile path and digest. `CostModel.from_spec(spec)` rebuilds it."""
        from bitalloc.hwcost.spec import spec_of

        return spec_of(self)

    @classmethod
    def from_spec_options(cls, spec) -> "CostModel":
        """Construct from a CostSpec of this class (device-bound models resolve the device)."""
        return cls(**spec.options)

    @staticmethod
    def from_spec(spec) -> "CostModel":
        """The cost model a CostSpec (or its JSON dict) describes."""
        from bitalloc.hwcost.spec import CostSpec

        return (spec if isinstance(spec, CostSpec) else CostSpec.from_json(spec)).build()

    @abstractmethod
    def costs(self, profile) -> np.ndarray:
        """C: (N, K) cost of each unit at each candidate, base units."""

    def factors(self, profile) -> tuple[np.ndarray, np.ndarray] | None:
        """(a: (N,), b: (K,)) float64 when `costs(profile)` is exactly a[:, None] · b[None, :]
        (a rank-one product, e.g. n_params · bits), so that solvers can keep the two vectors
        instead of the (N, K) matrix; None otherwise."""
        return None

    def scale(self, profile) -> float:
        return 1.0

    def feasible(self, profile) -> np.ndarray | None:
        return None

    def rows(self, profile) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(idx: (n_p,) unit indices, C_p: (n_p, K) base units)], total = max_p Σ C_p[i, choice[idx_i]].
        An additive model is the single row over all units."""
        return [(np.arange(len(profile)), self.costs(profile))]

    def chosen(self, profile, choice: np.ndarray) -> np.ndarray:
        """(N,) cost of each unit at its chosen candidate index `choice: (N,)`, base units.
        Subclasses with a closed form override this to avoid building the (N, K) matrix."""
        return self.costs(profile)[np.arange(len(choice)), choice]

    def total(self, profile, choice: np.ndarray) -> float:
        """Total in user units for candidate index `choice: (N,)`."""
        if self.additive:
            return float(self.chosen(profile, choice).sum() / self.scale(profile))
        best = max(float(c[np.arange(len(i)), choice[i]].sum()) for i, c in self.rows(profile))
        return best / self.scale(profile)
