"""Build objects from ``{"class_path": ..., "init_args": {...}}`` specs, as LightningCLI does.

``class_path`` is the registry: any importable class works. Used to rebuild exported students, data
modules named in a data YAML, and recipe parts outside a Lightning run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from distill.errors import one_line

__all__ = ["instantiate"]


def instantiate(spec: Mapping[str, Any], base: type = nn.Module) -> Any:
    """Build an object from a ``{"class_path": ..., "init_args": {...}}`` dict (nested specs too)."""
    from jsonargparse import ArgumentParser

    if "class_path" not in spec:
        raise ValueError(f"expected a class_path/init_args spec, got keys {sorted(spec)}")
    parser = ArgumentParser(exit_on_error=False, default_env=False)
    parser.add_argument("--obj", type=base)
    try:
        config = parser.parse_object({"obj": dict(spec)})
        return parser.instantiate_classes(config).obj
    except Exception as error:
        raise ValueError(f"could not build {spec['class_path']}: {one_line(error)}") from error
