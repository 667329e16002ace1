"""The registries of every axis a recipe names: runtimes, prune methods, quantization schemes, model tasks.

They live in `core` because the Recipe validates against them; their entries live higher up (one module
per runtime in `engine.runtimes`, the techniques in `engine.compress`, the tasks in `engine.models`) and
are imported on first use. The recipe's allowed names, the CLI's choices, the dashboard's pickers and the
tests' parameter lists all read `names()` from here.
"""
from __future__ import annotations

from typing import Any

from engine.core.registry import Registry

# Entry types (named, not imported: core imports no layer above it): engine.runtimes.base.Runtime,
# engine.compress.methods.PruneMethod, engine.compress.schemes.Scheme, engine.models.tasks.Task.
RUNTIMES: Registry[Any] = Registry("runtime", "runtime", fill="engine.runtimes")
PRUNE_METHODS: Registry[Any] = Registry("prune method", "prune.method", fill="engine.compress.methods")
SCHEMES: Registry[Any] = Registry("quantization scheme", "quantize.scheme", fill="engine.compress.schemes")
TASKS: Registry[Any] = Registry("task", "task", fill="engine.models.tasks")
