"""One naming scheme for places in a model, used by every stage (after TransformerLens).

A *site* is where a layer's neurons live: ``blocks.{layer}.mlp.hook_post`` for the
MLP/FFN hidden units of a transformer block (after the nonlinearity), and
``blocks.{layer}.hook_post`` for the output channels of a ResNet block (after its
final ReLU). A *neuron* is written ``L{layer}.N{index}``.
"""
from __future__ import annotations

import re

_NEURON = re.compile(r"^L(\d+)\.N(\d+)$")
_SITE = re.compile(r"^blocks\.(\d+)\.(?:mlp\.)?hook_post$")


def site(layer: int, modality: str = "text") -> str:
    return f"blocks.{layer}.mlp.hook_post" if modality == "text" else f"blocks.{layer}.hook_post"


def neuron_id(layer: int, neuron: int) -> str:
    return f"L{layer}.N{neuron}"


def parse_neuron_id(name: str) -> tuple[int, int]:
    m = _NEURON.match(name)
    if not m:
        raise ValueError(f"not a neuron name: {name!r} (expected L<layer>.N<index>)")
    return int(m.group(1)), int(m.group(2))


def parse_site(name: str) -> int:
    m = _SITE.match(name)
    if not m:
        raise ValueError(f"not a site name: {name!r}")
    return int(m.group(1))


def depth(layer: int, n_layers: int) -> float:
    """Relative depth in [0, 1]: how models of different size are aligned."""
    return 0.0 if n_layers <= 1 else layer / (n_layers - 1)
