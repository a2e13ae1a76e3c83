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

from neurolens.engine.models.adapters.base import Adapter
from neurolens.engine.causal.confidence import Confidence
from neurolens.engine.runtime.hooks import on_sites
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
            attr = batch_attributions(b, state["z"], state["a"], m, layers)
            idx = b.index.numpy()
            for l in layers:
                out[l][idx] = attr[l]
            if progress:
                progress(b.size)
    return out


def importance(adapter: Adapter, conf: Confidence, examples: Sequence[Example], layers: Sequence[int],
               **kw) -> dict[int, np.ndarray]:
    """{layer: [N]} mean over the given (concept, train) examples of |a·∂M/∂a|."""
    attr = attributions(adapter, conf, examples, layers, **kw)
    return {l: np.abs(v).astype(np.float64).mean(0) for l, v in attr.items()}


#: bytes of autograd graph a readout-probe model may keep while its probe is fitted
GRAPH_BUDGET = 1 << 30


class InPass:
    """Importance taken in the extraction pass: the concept train rows run once, with
    autograd, and give both their pooled activations and one backward each.

    A target confidence (LM head) needs nothing before the backward. A readout probe is
    fitted on the features of every train row, so the other train rows run first (their
    features from the same forward that pools them), the concept rows keep their graphs
    until the probe is fitted, then each takes its backward. When those graphs would pass
    `budget` bytes, the concept rows only give features in the pass, and the caller
    takes the importance the separate way (`importance`) with the probe already fitted."""

    def __init__(self, conf: Confidence, examples: Sequence[Example], *, budget: int = GRAPH_BUDGET):
        self.conf = conf
        self.grad = np.array([e.label == 1 and e.split == "train" for e in examples], dtype=bool)
        self.train = np.array([e.split == "train" for e in examples], dtype=bool)
        self.budget = budget
        self.result: dict[int, np.ndarray] | None = None

    @staticmethod
    def fusable(adapter: Adapter, conf: Confidence) -> bool:
        """A masked LM's target input carries an extra [MASK]: not the extracted input."""
        return not (conf.mode == "target" and adapter.kind == "masked_lm")

    def graph_bytes(self, adapter: Adapter, tokens: int, layers: Sequence[int]) -> int:
        """A rough bound on the autograd graph the concept rows keep (readout only)."""
        width = max(adapter.n_neurons(l) for l in layers)
        return int(tokens) * adapter.n_layers * 24 * width

    @staticmethod
    def attributions(b, zs: dict[int, torch.Tensor], acts: dict[int, torch.Tensor], m: torch.Tensor,
                     layers: Sequence[int]) -> dict[int, np.ndarray]:
        """`batch_attributions`, reached through the object extraction was handed (runtime
        does not import causal)."""
        return batch_attributions(b, zs, acts, m, layers)


def batch_attributions(b, zs: dict[int, torch.Tensor], acts: dict[int, torch.Tensor], m: torch.Tensor,
                       layers: Sequence[int]) -> dict[int, np.ndarray]:
    """{layer: [B, N]} a·∂M/∂a summed over positions (space), from one backward of m."""
    grads = torch.autograd.grad(m.sum(), [zs[l] for l in layers], allow_unused=True)
    out = {}
    for l, g in zip(layers, grads):
        a = acts[l].float()
        if g is None:
            out[l] = np.zeros((a.shape[0], a.shape[-1] if a.dim() == 3 else a.shape[1]), np.float32)
            continue
        prod = a * g.float()
        if prod.dim() == 4:      # vision: channels over space
            attr = prod.flatten(2).sum(2)
        else:
            mask = b.mask.unsqueeze(-1).to(prod.dtype) if b.mask is not None else 1.0
            attr = (prod * mask).sum(1)
        out[l] = attr.detach().cpu().numpy()
    return out
