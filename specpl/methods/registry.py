"""The host and booster registries, kept apart from `__init__` so method modules can import them."""

from __future__ import annotations

from specpl.registry import Registry

HOSTS: Registry = Registry("host method")
BOOSTERS: Registry = Registry("booster")
