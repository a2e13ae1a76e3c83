"""One naming scheme for places in a model, used by every stage (after TransformerLens).

A *site* is where a layer's neurons live: ``blocks.{layer}.mlp.hook_post`` for the
MLP/FFN hidden units of a transformer block (after the nonlinearity), and
``blocks.{layer}.hook_post`` for the output channels of a ResNet block (after its
final ReLU). A *neuron* is written ``L{layer}.N{index}``.
"""
from __future__ import annotations


def site(layer: int, modality: str = "text") -> str:
    return f"blocks.{layer}.mlp.hook_post" if modality == "text" else f"blocks.{layer}.hook_post"


def neuron_id(layer: int, neuron: int) -> str:
    return f"L{layer}.N{neuron}"


def depth(layer: int, n_layers: int) -> float:
    """Relative depth in [0, 1]: how models of different size are aligned."""
    return 0.0 if n_layers <= 1 else layer / (n_layers - 1)
