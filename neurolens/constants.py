"""The project's shared thresholds, in one place.

A leaf module like `neurolens.errors`: it imports nothing, so kernels, store, engine, queries
and reports all read the same numbers (named queries name them as defaults: `= ALPHA`).
"""
from __future__ import annotations

ALPHA = 0.05   # q-value (BH) below which a neuron is significant; also the replication test's p
Z_MIN = 3.0    # ablation z at which a neuron counts as validated against random controls

#: what a named query's `-- param: NAME TYPE = CONSTANT` default may name
NAMED = {"ALPHA": ALPHA, "Z_MIN": Z_MIN}

__all__ = ["ALPHA", "NAMED", "Z_MIN"]
