"""Importance by attribution patching: |a · ∂M/∂a| for every neuron, from one forward and
one backward pass per batch (DESIGN: "Scores").

A zero tensor is added at every site and the gradient is taken with respect to it, so
∂M/∂a is the total derivative through everything downstream of the site. The
per-example attribution sums a·∂M/∂a over positions (the first-order effect of
zeroing the neuron everywhere) before the absolute value is taken.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from neurolens.engine.adapters.base import Adapter
from neurolens.engine.confidence import Confidence
from neurolens.engine.hooks import on_sites
from neurolens.probes.types import Example


def attributions(adapter: Adapter, conf: Confidence, examples: Sequence[Example], layers: Sequence[int],
                 *, batch_size: int = 16, progress: Callable[[int], None] | None = None
                 ) -> dict[int, np.ndarray]:
    """{layer: [n_examples, N]} signed attributions a·∂M/∂a, summed over positions."""
    layers = sorted(layers)
    out = {l: np.zeros((len(examples), adapter.n_neurons(l)), dtype=np.float32) for l in layers}
    state: dict = {}

    def patch(layer: int, acts: torch.Tensor) -> torch.Tensor:
        z = torch.zeros_like(acts, requires_grad=True)
        state["z"][layer] = z
        state["a"][layer] = acts.detach()
        return acts + z

    with torch.enable_grad(), on_sites(adapter, layers, patch):
        for b in adapter.batches(examples, batch_size, with_targets=conf.with_targets):
            b = b.to(adapter.device)
            state.update(z={}, a={})
            m = conf(b)
            grads = torch.autograd.grad(m.sum(), [state["z"][l] for l in layers], allow_unused=True)
            idx = b.index.numpy()
            for l, g in zip(layers, grads):
                a = state["a"][l].float()
                if g is None:
                    continue
                prod = a * g.float()
                if prod.dim() == 4:      # vision: channels over space
                    attr = prod.flatten(2).sum(2)
                else:
                    mask = b.mask.unsqueeze(-1).to(prod.dtype) if b.mask is not None else 1.0
                    attr = (prod * mask).sum(1)
                out[l][idx] = attr.detach().cpu().numpy()
            if progress:
                progress(b.size)
    return out


def importance(adapter: Adapter, conf: Confidence, examples: Sequence[Example], layers: Sequence[int],
               **kw) -> dict[int, np.ndarray]:
    """{layer: [N]} mean over the given (concept, train) examples of |a·∂M/∂a|."""
    attr = attributions(adapter, conf, examples, layers, **kw)
    return {l: np.abs(v).astype(np.float64).mean(0) for l, v in attr.items()}
