"""The project's shared thresholds, in one place.

A leaf module like `neurolens.errors`: it imports nothing, so kernels, store, engine, queries
and reports all read the same numbers (named queries name them as defaults: `= ALPHA`).
"""
from __future__ import annotations

ALPHA = 0.05   # q-value (BH) below which a neuron is significant; also the replication test's p
#: the group-level standardised effect (DESIGN `effect`: mean d_g / sd d_g, Cohen's d_z) a
#: significant neuron must reach: "large" by Cohen's convention, and above the largest effect a
#: neuron driven only by a word present on one side in a share m of groups can have,
#: sqrt(m / (1 - m)), for every m below 0.39 (docs/scores.md)
EFFECT_GATE = 0.8
#: an ablated set is validated when its ablation q-value (BH over the sets tested) is below
#: ALPHA and its concept examples lose more than this many times what the others lose
#: (engine/causal/ablation/verdict.py holds the one definition)
SPECIFICITY_MIN = 2.0
#: the off-target drop a specificity divides by is at least this (1 % of the confidence):
#: where the other examples lose nothing, or gain, the ratio keeps its sign and its meaning
OFF_TARGET_FLOOR = 0.01

#: what a named query's `-- param: NAME TYPE = CONSTANT` default may name
NAMED = {"ALPHA": ALPHA, "EFFECT_GATE": EFFECT_GATE, "SPECIFICITY_MIN": SPECIFICITY_MIN,
         "OFF_TARGET_FLOOR": OFF_TARGET_FLOOR}

__all__ = ["ALPHA", "EFFECT_GATE", "NAMED", "OFF_TARGET_FLOOR", "SPECIFICITY_MIN"]
