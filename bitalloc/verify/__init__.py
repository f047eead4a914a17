"""Verify an applied allocation from its weights: budgets recomputed, quality against baselines."""
from bitalloc.verify.budgets import verify

__all__ = ["verify"]
