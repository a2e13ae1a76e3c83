"""The scoring stage: stream stored activations layer by layer through the kernels, add
importance from the model, and publish the `scores` partition."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from neurolens.engine.naming import depth
from neurolens.kernels import ScoreAccumulator
from neurolens.probes.types import ProbeSet
from neurolens.store import SCHEMAS, Store, read_layer

SCORE_VERSION = "1"
CHUNK = 4096  # neuron columns scored at once: memory is n_examples x CHUNK


def scores_table(cols: dict[str, np.ndarray], n_layers: int, run_id: str) -> pa.Table:
    n = cols["layer"].shape[0]
    rank = cols["rank"].astype(np.int64)
    data = {
        "layer": cols["layer"].astype(np.int32), "neuron": cols["neuron"].astype(np.int32),
        "n_layers": np.full(n, n_layers, np.int32),
        "depth": np.array([depth(int(l), n_layers) for l in range(n_layers)])[cols["layer"]],
    }
    for c in ("selectivity", "auc", "cohens_d", "mean_pos", "mean_neg", "std_pos", "std_neg",
              "p_value", "q_value", "consistency", "importance", "importance_pct", "score",
              "range_lo", "range_hi", "range_overlap"):
        data[c] = np.asarray(cols[c], dtype=np.float64)
    arrays = {k: pa.array(v) for k, v in data.items()}
    arrays["rank"] = pa.array(np.where(rank > 0, rank, 0).astype(np.int32), mask=rank <= 0)
    arrays["importance"] = pa.array(data["importance"], from_pandas=True)  # NaN -> null
    arrays["importance_pct"] = pa.array(data["importance_pct"], from_pandas=True)
    arrays["run_id"] = pa.array([run_id] * n, pa.string())
    schema = SCHEMAS["scores"]
    return pa.Table.from_arrays([arrays[f.name].cast(f.type) for f in schema], schema=schema)


def example_arrays(probes: ProbeSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(example_id, is_train, label), sorted by example_id, for vectorised lookups."""
    ids = np.fromiter((e.example_id for e in probes.examples), np.int64)
    train = np.fromiter((e.split == "train" for e in probes.examples), bool)
    labels = np.fromiter((e.label for e in probes.examples), np.int64)
    o = np.argsort(ids, kind="stable")
    return ids[o], train[o], labels[o]


def score_layers(store: Store, model: str, probes: ProbeSet, layers: Sequence[int], *,
                 backend: str = "auto", device: str | None = None,
                 progress: Callable[[int], None] | None = None) -> ScoreAccumulator:
    """One streaming pass: each layer's train rows, in column chunks, into the accumulator.
    On an accelerator (`device="cuda"`) each chunk goes to it and the torch kernels run there."""
    ex_ids, is_train, ex_labels = example_arrays(probes)
    acc = ScoreAccumulator(backend=backend)
    for l in layers:
        ids, acts = read_layer(store, model, probes.concept, l)
        pos = np.searchsorted(ex_ids, ids)
        train = is_train[pos]
        labels = ex_labels[pos][train]
        x = acts[train]
        for s in range(0, x.shape[1], CHUNK):
            chunk = x[:, s:s + CHUNK]
            if device is not None and str(device).startswith("cuda"):
                import torch

                chunk = torch.from_numpy(np.ascontiguousarray(chunk)).to(device)
            acc.add(l, chunk, labels, neuron_offset=s)
        if progress:
            progress(1)
    return acc


def write_scores(store: Store, model: str, concept: str, acc: ScoreAccumulator,
                 importance: dict[int, np.ndarray] | None, n_layers: int, *, key: str,
                 run_id: str) -> pa.Table:
    t0 = time.perf_counter()
    cols = acc.finalize(importance=importance)
    table = scores_table(cols, n_layers, run_id)
    store.write_partition("scores", {"model": model, "concept": concept}, table, key=key,
                          run_id=run_id, extra={"seconds": time.perf_counter() - t0})
    return table
