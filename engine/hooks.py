"""Forward hooks on neuron sites: read (pool), stop early, or rewrite activations."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from neurolens.engine.adapters.base import Adapter, StopForward

HookFn = Callable[[int, torch.Tensor], torch.Tensor | None]


@contextlib.contextmanager
def on_sites(adapter: Adapter, layers: Sequence[int], fn: HookFn, *,
             stop_after: int | None = None) -> Iterator[None]:
    """Call fn(layer, activations) at each site; a returned tensor replaces the
    activations. After `stop_after`'s site the forward pass is abandoned."""
    handles = []

    def make(layer: int):
        def hook(_mod, _inp, out):
            new = fn(layer, out)
            if stop_after is not None and layer == stop_after:
                raise StopForward
            return new
        return hook

    try:
        for l in layers:
            handles.append(adapter.neuron_module(l).register_forward_hook(make(l)))
        yield
    finally:
        for h in handles:
            h.remove()
