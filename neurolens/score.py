"""The scoring stage: stream stored activations layer by layer through the kernels, add
importance from the model, and publish the `scores` partition."""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from neurolens.constants import ALPHA
from neurolens.engine.models.naming import depth
from neurolens.numerics import ScoreAccumulator, make_design, min_attainable_p
from neurolens.numerics.peers import PROBE_K
from neurolens.probes.types import ProbeSet
from neurolens.store import SCHEMAS, Store, read_layer

SCORE_VERSION = "3"   # 3: direction, effect gate, lexical control, corrected replication, group consistency
CHUNK = 4096  # neuron columns scored at once: memory is n_examples x CHUNK
TOO_FEW = "too few groups for any finding: add phrasings or words"


def scores_table(cols: dict[str, np.ndarray], n_layers: int, run_id: str) -> pa.Table:
    n = cols["layer"].shape[0]
    data = {
        "layer": cols["layer"].astype(np.int32), "neuron": cols["neuron"].astype(np.int32),
        "n_layers": np.full(n, n_layers, np.int32),
        "depth": np.array([depth(int(l), n_layers) for l in range(n_layers)])[cols["layer"]],
    }
    for c in ("selectivity", "auc", "cohens_d", "mean_pos", "mean_neg", "std_pos", "std_neg",
              "p_value", "q_value", "effect", "consistency", "tpr_at_5fpr", "importance",
              "importance_pct", "score", "range_lo", "range_hi", "range_overlap",
              "selectivity_test", "p_test", "q_test"):
        data[c] = np.asarray(cols[c], dtype=np.float64)
    data["n_units"] = np.asarray(cols["n_units"], dtype=np.int32)
    data["direction"] = np.asarray(cols["direction"], dtype=np.int8)
    for c in ("significant", "opposite", "lexical", "replicated"):
        data[c] = np.asarray(cols[c], dtype=bool)
    arrays = {k: pa.array(v) for k, v in data.items()}
    for c in ("selectivity_test", "p_test", "q_test"):      # NaN -> null: not tested
        arrays[c] = pa.array(data[c], from_pandas=True)
    for c in ("rank", "rank_probeless", "rank_probe"):
        r = np.asarray(cols[c]).astype(np.int64)
        arrays[c] = pa.array(np.where(r > 0, r, 0).astype(np.int32), mask=r <= 0)
    arrays["importance"] = pa.array(data["importance"], from_pandas=True)  # NaN -> null
    arrays["importance_pct"] = pa.array(data["importance_pct"], from_pandas=True)
    arrays["run_id"] = pa.array([run_id] * n, pa.string())
    schema = SCHEMAS["scores"]
    return pa.Table.from_arrays([arrays[f.name].cast(f.type) for f in schema], schema=schema)


def example_arrays(probes: ProbeSet) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(example_id, is_train, label, group code), sorted by example_id, for vectorised
    lookups. The group code is -1 for an example without a group (the probe loaders give
    each ungrouped example a group of its own, which the test treats the same way)."""
    ids = np.fromiter((e.example_id for e in probes.examples), np.int64)
    train = np.fromiter((e.split == "train" for e in probes.examples), bool)
    labels = np.fromiter((e.label for e in probes.examples), np.int64)
    codes: dict[str, int] = {}
    grp = np.fromiter((codes.setdefault(e.group, len(codes)) if e.group else -1
                       for e in probes.examples), np.int64)
    o = np.argsort(ids, kind="stable")
    return ids[o], train[o], labels[o], grp[o]


@dataclass(frozen=True)
class Inference:
    """What the group-level test can say with this probe's train split."""

    paired: bool
    n_units: int
    min_p: float        # smallest p a perfect neuron can honestly reach (a permutation bound)

    def feasible(self, n_neurons: int, alpha: float = ALPHA) -> bool:
        """Could even a perfect neuron pass q < alpha among ``n_neurons``?"""
        return self.min_p * max(1, n_neurons) <= alpha

    @property
    def design(self) -> str:
        return "paired" if self.paired else "cell"


def inference(probes: ProbeSet) -> Inference:
    _, train, labels, grp = example_arrays(probes)
    d = make_design(labels[train], grp[train])
    return Inference(d.paired, d.n_units, min_attainable_p(d))


def score_layers(store: Store, model: str, probes: ProbeSet, layers: Sequence[int], *,
                 backend: str = "auto", device: str | None = None, probe_k: int = PROBE_K,
                 progress: Callable[[int], None] | None = None,
                 acts: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None) -> ScoreAccumulator:
    """One streaming pass: each layer's train rows, in column chunks, into the accumulator.
    The test rows of the same columns only feed the replication columns. On an accelerator
    (`device="cuda"`) each chunk goes to it and the torch kernels run there. `acts` holds
    layers the extraction just published ({layer: (ids, acts)} as `read_layer` gives
    them): those are not read back from the store."""
    ex_ids, is_train, ex_labels, ex_grp = example_arrays(probes)
    acc = ScoreAccumulator(backend=backend, probe_k=probe_k)
    cuda = device is not None and str(device).startswith("cuda")

    def put(a):
        if not cuda:
            return a
        import torch

        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    for l in layers:
        ids, a = acts[l] if acts is not None and l in acts else read_layer(store, model, probes.concept, l)
        pos = np.searchsorted(ex_ids, ids)
        train = is_train[pos]
        labels, groups = ex_labels[pos][train], ex_grp[pos][train]
        t_labels, t_groups = ex_labels[pos][~train], ex_grp[pos][~train]
        x, xt = a[train], a[~train]
        for s in range(0, x.shape[1], CHUNK):
            test = (put(xt[:, s:s + CHUNK]), t_labels, t_groups) if len(t_labels) else None
            acc.add(l, put(x[:, s:s + CHUNK]), labels, groups=groups, neuron_offset=s, test=test)
        if progress:
            progress(1)
    return acc


def write_scores(store: Store, model: str, concept: str, acc: ScoreAccumulator,
                 importance: dict[int, np.ndarray] | None, n_layers: int, *, key: str,
                 run_id: str, lexical: np.ndarray | None = None) -> pa.Table:
    """Finalize and publish; ``lexical`` marks the neurons significant on the concept's
    lexical control, in (layer, neuron) order."""
    t0 = time.perf_counter()
    cols = acc.finalize(importance=importance, lexical=lexical)
    table = scores_table(cols, n_layers, run_id)
    store.write_partition("scores", {"model": model, "concept": concept}, table, key=key,
                          run_id=run_id, extra={"seconds": time.perf_counter() - t0})
    return table
