"""Sensitivity estimators, one per file, found by name (`get_estimator("weight_error")`)."""
from ..registry import Registry

ESTIMATORS = Registry("estimator", {"weight_error": "bitalloc.sensitivity.weight_error"})
register = ESTIMATORS.register


def get_estimator(name: str, **options):
    return ESTIMATORS.create(name, **options)
