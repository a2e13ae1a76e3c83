"""NeuroLens: find the neurons of a neural network that encode a concept.

    import neurolens as nl
    m = nl.load("minilm")                  # a Model, reusable across concepts
    f = m.find("negation")                 # a Finding: f.top(10), f.scores, f.report_path
    nl.Store("neurolens-out").sql("select model, concept, count(*) from scores group by all")

Every error a user can cause is a `nl.NeuroLensError`. The API is imported on first use,
so `import neurolens` (and every `neurolens.<folder>` import) stays light.
"""
from __future__ import annotations

from typing import Any

from neurolens.errors import (
    ConfigError, ModelError, NeuroLensError, ProbeError, QueryError, ReportError, StoreError,
)

_API = ("Finding", "Model", "Probes", "Store", "SweepResult", "find", "load", "scan", "sweep")

__all__ = ["ConfigError", "ModelError", "NeuroLensError", "ProbeError", "QueryError", "ReportError",
           "StoreError", *_API]


def __getattr__(name: str) -> Any:
    if name in ("SweepResult", "sweep"):
        from neurolens import sweeps

        return getattr(sweeps, name)
    if name in _API:
        from neurolens import api

        return getattr(api, name)
    raise AttributeError(f"module 'neurolens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
