"""The built-in methods, registered on import: import this module to use the registry
(`trainables.method.REGISTRY`). A new method adds its module's import here."""
from __future__ import annotations

from augtune.trainables import kd, sla, ssd
from augtune.trainables.method import REGISTRY, Method, get_method

BUILTIN: tuple[Method, ...] = (kd.METHOD, sla.METHOD, ssd.METHOD)

__all__ = ["BUILTIN", "REGISTRY", "Method", "get_method"]
