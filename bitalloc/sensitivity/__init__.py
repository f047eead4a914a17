"""Sensitivity estimators, one per file, found by name (`get_estimator("weight_error")`)."""
from bitalloc.registry import Registry

ESTIMATORS = Registry("estimator", {name: f"bitalloc.sensitivity.{name}" for name in
                                    ("weight_error", "hessian", "fisher", "lrp", "salience", "measured", "kv",
                                     "local", "hybrid")})
register = ESTIMATORS.register


def get_estimator(name: str, **options):
    return ESTIMATORS.create(name, **options)


def profile_task(task, estimator: str = "fisher", bits=(2, 3, 4, 5, 6, 8), granularity: str = "layer",
                 group_size: int = 128, progress=None, graph: bool = False, **options):
    """Score every unit of `task` (a bitalloc Task, e.g. from `bitalloc.load_model`) with one
    registered estimator (`ESTIMATORS.names()`: fisher, hessian, salience, lrp, measured,
    weight_error, kv) and return the Profile. bits: candidate bit-widths or format names;
    options: the estimator's own (probes=..., units=... for measured, ...); graph: also attach
    the layer graph the peak-SRAM cost model reads (one more forward pass)."""
    est = ESTIMATORS.create(estimator, bits=tuple(bits), granularity=granularity, group_size=group_size, **options)
    est.units(task)  # group size against the layers: fail before any work
    prof = est.estimate(task, progress=progress)
    if graph:
        from bitalloc.hwcost.graph import attach_graph

        attach_graph(prof, task)
    return prof
