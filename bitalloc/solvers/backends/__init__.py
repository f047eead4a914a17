"""ILP backends, one per file, found by name: `highs` (default), `pulp` (CBC), `cpsat` (OR-Tools)."""
from ...registry import Registry

BACKENDS = Registry("backend", {"highs": "bitalloc.solvers.backends.highs",
                                "pulp": "bitalloc.solvers.backends.pulp_cbc",
                                "cpsat": "bitalloc.solvers.backends.cpsat"})
register = BACKENDS.register


class Backend:
    """solve(milp, time_limit, gap, hint) -> BackendResult; hint: (M,) feasible start or None."""

    name = "backend"

    def solve(self, milp, time_limit, gap, hint):
        raise NotImplementedError
