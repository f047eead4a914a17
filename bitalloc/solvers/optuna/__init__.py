"""Optuna search over allocations (space, storage, parallel runs)."""
