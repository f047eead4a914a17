"""Name → class registries for pluggable parts (solvers, cost models, estimators, ILP backends).

Parts register themselves with a decorator in their own module; the registry imports the
module lazily the first time a name is asked for, so `bitalloc solve` never imports what it
does not use (no torch for the solvers).
"""
from __future__ import annotations

import importlib
import inspect

from bitalloc.errors import bad


class Registry:
    """Maps a name to a class; `modules` maps each built-in name to the module that defines it."""

    def __init__(self, kind: str, modules: dict[str, str]):
        self.kind = kind
        self._modules = dict(modules)
        self._classes: dict[str, type] = {}

    def register(self, name: str):
        def deco(cls):
            cls.name = name
            self._classes[name] = cls
            return cls
        return deco

    def names(self) -> list[str]:
        return sorted(set(self._modules) | set(self._classes))

    def get(self, name: str) -> type:
        if name not in self._classes and name in self._modules:
            importlib.import_module(self._modules[name])
        if name not in self._classes:
            raise bad(self.kind, name, f"allowed: {', '.join(self.names())}")
        return self._classes[name]

    def create(self, name: str, **options):
        cls = self.get(name)
        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            allowed = [p for p in params if p != "self"]
            for key in options:
                if key not in allowed:
                    raise bad(f"{self.kind} {name} option", key, f"allowed: {', '.join(allowed) or 'none'}")
        return cls(**options)
