"""Solvers, one per file, found by name (`get_solver("ilp", backend="highs")`)."""
from bitalloc.registry import Registry

SOLVERS = Registry("solver", {"ilp": "bitalloc.solvers.ilp", "greedy": "bitalloc.solvers.greedy",
                                 "optuna": "bitalloc.solvers.optuna.search",
                                 "dmmv": "bitalloc.solvers.dmmv", "auto": "bitalloc.solvers.auto"})
register = SOLVERS.register


def get_solver(name: str, **options):
    return SOLVERS.create(name, **options)
