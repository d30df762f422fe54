"""Per-platform mock answers: tests/mockdata/<platform>.py for every platform of components/clouds/registry.py.

A platform without its module here fails at import with the module's name: that is the file to write."""

import importlib
from types import ModuleType

from multicloud_overlay.components.clouds.registry import PLATFORMS as REGISTRY

PLATFORMS: tuple[ModuleType, ...] = tuple(importlib.import_module(f"tests.mockdata.{name}") for name in REGISTRY)
