"""ILP backends, one per file, found by name: `highs` (default), `pulp` (CBC), `cpsat` (OR-Tools)."""
from abc import ABC, abstractmethod

from bitalloc.registry import Registry

BACKENDS = Registry("backend", {"highs": "bitalloc.solvers.backends.highs",
                                "pulp": "bitalloc.solvers.backends.pulp_cbc",
                                "cpsat": "bitalloc.solvers.backends.cpsat",
                                "highs-child": "bitalloc.solvers.backends.highs_child"})
register = BACKENDS.register


class Backend(ABC):
    """solve(milp, time_limit, gap, hint) -> BackendResult; hint: (M,) feasible start or None."""

    name = "backend"

    @abstractmethod
    def solve(self, milp, time_limit, gap, hint):
        """Solve the 0/1 program `milp` (bitalloc/solvers/milp.py)."""
