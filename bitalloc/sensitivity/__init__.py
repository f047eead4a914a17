"""Sensitivity estimators, one per file, found by name (`get_estimator("weight_error")`)."""
from bitalloc.registry import Registry

ESTIMATORS = Registry("estimator", {name: f"bitalloc.sensitivity.{name}" for name in
                                    ("weight_error", "hessian", "fisher", "lrp", "salience", "measured", "kv",
                                     "local", "hybrid")})
register = ESTIMATORS.register


def get_estimator(name: str, **options):
    return ESTIMATORS.create(name, **options)
