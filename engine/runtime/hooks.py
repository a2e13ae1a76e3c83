"""Hooks on neuron sites: read (pool), stop early, or rewrite activations.

A site is a module's output (a forward hook, whose returned tensor replaces the
output) or its input (a forward pre-hook, whose returned tensor replaces the first
positional input): `Adapter.neuron_site` says which. Callers see one signature either
way, so extraction, importance, ablation and labels need not know.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from neurolens.engine.models.adapters.base import Adapter, StopForward

HookFn = Callable[[int, torch.Tensor], torch.Tensor | None]


@contextlib.contextmanager
def on_sites(adapter: Adapter, layers: Sequence[int], fn: HookFn, *,
             stop_after: int | None = None) -> Iterator[None]:
    """Call fn(layer, activations) at each site; a returned tensor replaces the
    activations. After `stop_after`'s site the forward pass is abandoned."""
    handles = []

    def after(layer: int, new: torch.Tensor | None) -> torch.Tensor | None:
        if stop_after is not None and layer == stop_after:
            raise StopForward
        return new

    def output_hook(layer: int):
        def hook(_mod, _inp, out):
            return after(layer, fn(layer, out))
        return hook

    def input_hook(layer: int):
        def hook(_mod, args):
            new = after(layer, fn(layer, args[0]))
            return None if new is None else (new, *args[1:])
        return hook

    try:
        for l in layers:
            mod, side = adapter.neuron_site(l)
            if side == "input":
                handles.append(mod.register_forward_pre_hook(input_hook(l)))
            elif side == "output":
                handles.append(mod.register_forward_hook(output_hook(l)))
            else:
                raise ValueError(f"{adapter.name}: site side {side!r} is neither 'input' nor 'output'")
        yield
    finally:
        for h in handles:
            h.remove()
