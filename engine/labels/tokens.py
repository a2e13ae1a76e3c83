"""Top examples of the best-ranked neurons, and their token-level activations.

The one part of labelling that runs the model: a forward pass over just the top examples
(never the whole probe set), hooked at the neurons' sites.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch

from neurolens.probes.types import ProbeSet
from neurolens.store import SCHEMAS, Store, read_layer
from neurolens.store.top import top_neurons

TOP_NEURONS = 50        # neurons per model × concept that get top examples
TOP_EXAMPLES = 8        # top activating examples per neuron

Tick = Callable[[int], None]


def top_examples(adapter, probes: ProbeSet, store: Store, *, run_id: str,
                 n_neurons: int = TOP_NEURONS, n_examples: int = TOP_EXAMPLES,
                 batch_size: int = 32, progress: Tick | None = None) -> pa.Table:
    """The top activating examples of this model × concept's best-ranked neurons, with
    token-level activations from one forward pass over just those examples."""
    model, concept = adapter.name, probes.concept
    best = top_neurons(store, model, concept, n_neurons, columns=("layer", "neuron"))
    layer_of = best.column("layer").to_numpy().astype(np.int64)
    neuron_of = best.column("neuron").to_numpy().astype(np.int64)
    schema = SCHEMAS["top_examples"]
    if best.num_rows == 0:
        return schema.empty_table()

    index_of = {e.example_id: i for i, e in enumerate(probes.examples)}
    picks: list[tuple[int, int, int, float]] = []   # (layer, neuron, example row, pooled act)
    for l in np.unique(layer_of):
        ids, acts = read_layer(store, model, concept, int(l))
        cols = neuron_of[layer_of == l]
        a = acts[:, cols].astype(np.float32)                      # [n_ex, k]
        m = min(n_examples, a.shape[0])
        top = np.argsort(-a, axis=0, kind="stable")[:m]           # [m, k]
        for j, n in enumerate(cols):
            for r in top[:, j]:
                picks.append((int(l), int(n), index_of[int(ids[r])], float(a[r, j])))

    rows = sorted({p[2] for p in picks})
    sub = [probes.examples[i] for i in rows]
    pos_in_sub = {r: i for i, r in enumerate(rows)}
    want = {int(l): np.unique(neuron_of[layer_of == l]) for l in np.unique(layer_of)}
    tokens, traces = _token_traces(adapter, sub, want, batch_size, progress)

    out = {f.name: [] for f in schema}
    for l, n, r, act in picks:
        i = pos_in_sub[r]
        col = int(np.searchsorted(want[l], n))
        out["layer"].append(l)
        out["neuron"].append(n)
        out["example_id"].append(probes.examples[r].example_id)
        out["activation"].append(act)
        out["tokens"].append(tokens[i])
        out["token_acts"].append(traces[l][i][:, col].tolist())
        out["run_id"].append(run_id)
    return pa.Table.from_pydict(out, schema=schema)


@torch.inference_mode()
def _token_traces(adapter, examples, want: dict[int, np.ndarray], batch_size: int,
                  progress: Tick | None):
    """tokens[i] and traces[layer][i] ([T_i, k_layer] float32) for each example: the
    activations of the wanted neurons at every real token (text), or on a coarse ≤4×4
    spatial grid flattened (vision, no tokens)."""
    layers = sorted(want)
    n = len(examples)
    tokens: list[list[str]] = [[] for _ in range(n)]
    traces: dict[int, list[np.ndarray]] = {l: [np.zeros((0, 0), np.float32)] * n for l in layers}
    sel = {l: torch.as_tensor(want[l], dtype=torch.long) for l in layers}
    state: dict = {}
    vision = adapter.modality == "vision"

    def grab(layer: int, out: torch.Tensor) -> None:
        b = state["batch"]
        if vision:
            x = out[:, sel[layer].to(out.device)].float()                        # [B, k, H, W]
            x = torch.nn.functional.adaptive_avg_pool2d(x, (min(4, x.shape[2]), min(4, x.shape[3])))
            x = x.flatten(2).transpose(1, 2).cpu().numpy()                        # [B, cells, k]
            for r, i in enumerate(b.index.tolist()):
                traces[layer][i] = x[r]
            return
        x = out[..., sel[layer].to(out.device)].float().cpu().numpy()             # [B, T, k]
        mask = b.mask.bool().cpu().numpy() if b.mask is not None else np.ones(x.shape[:2], bool)
        for r, i in enumerate(b.index.tolist()):
            traces[layer][i] = x[r][mask[r]]

    from neurolens.engine.runtime.hooks import on_sites

    with on_sites(adapter, layers, grab, stop_after=layers[-1]):
        for b in adapter.batches(examples, batch_size):
            if not vision:
                ids = b.inputs["input_ids"]
                mask = b.mask.bool() if b.mask is not None else torch.ones_like(ids, dtype=torch.bool)
                for r, i in enumerate(b.index.tolist()):
                    tokens[i] = adapter.processor.convert_ids_to_tokens(ids[r][mask[r]].tolist())
            b = b.to(adapter.device)
            state["batch"] = b
            adapter.forward(b)
            if progress:
                progress(1)
    return tokens, traces
