"""Embedded profiles. `default_profile_path()`: SmolLM2-135M-Instruct, per linear layer."""
from pathlib import Path

DEFAULT_PROFILE = "smollm2-135m.profile.json"


def default_profile_path() -> Path:
    return Path(__file__).with_name(DEFAULT_PROFILE)
