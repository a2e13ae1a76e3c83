"""What each neuron writes into the output vocabulary, from the weights alone: its readout
column (the row of the MLP's output projection it multiplies) through the final norm's scale
into the unembedding. The direct path only: later layers and the norm's centring and division
are left out, as in Neuronpedia's and SAEDashboard's logit tables."""
from __future__ import annotations

import torch

from neurolens.engine.models.adapters.base import Adapter


def _final_scale(adapter: Adapter) -> torch.Tensor | None:
    base = adapter.base() if hasattr(adapter, "base") else adapter.model
    for name in ("ln_f", "norm", "final_layernorm"):
        mod = getattr(base, name, None)
        if mod is not None and getattr(mod, "weight", None) is not None:
            return mod.weight.detach().float()
    return None


def readout_rows(adapter: Adapter, layer: int) -> torch.Tensor | None:
    """[N, d] each neuron's readout column; None where the adapter names no affine readout."""
    mod = adapter.neuron_readout(layer)
    if mod is None:
        return None
    w = mod.weight.detach().float()
    n = adapter.n_neurons(layer)
    if w.shape[0] == n and type(mod).__name__ == "Conv1D":   # GPT-2: weight [in, out]
        return w
    return w.t() if w.shape[1] == n else None


def logit_effects(adapter: Adapter, layer: int, k: int = 10, chunk: int = 256
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(top ids [N, k], top effects, bottom ids, bottom effects) of every neuron of `layer`;
    None for a model without a causal LM head or without the weights this needs."""
    if adapter.kind != "causal_lm":
        return None
    head = adapter.model.get_output_embeddings() if hasattr(adapter.model, "get_output_embeddings") else None
    rows = readout_rows(adapter, layer)
    scale = _final_scale(adapter)
    if head is None or rows is None or scale is None:
        return None
    wu = head.weight.detach().float()                                  # [V, d]
    out = [], [], [], []
    for lo in range(0, rows.shape[0], chunk):
        eff = (rows[lo:lo + chunk] * scale) @ wu.t()                   # [n, V]
        t = eff.topk(k, dim=1)
        b = eff.topk(k, dim=1, largest=False)
        for lst, x in zip(out, (t.indices, t.values, b.indices, b.values)):
            lst.append(x.cpu())
    return tuple(torch.cat(x) for x in out)  # type: ignore[return-value]
