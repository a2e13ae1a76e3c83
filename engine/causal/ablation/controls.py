"""Random control sets for ablation, matched to the tested neurons on layer and magnitude.

A top neuron is partly chosen for its importance against the same confidence the
ablation reads, and big neurons move a model more than small ones. A control drawn from
its layer alone therefore answers "is this neuron bigger than average", not "is it the
concept's". So each neuron's controls come from its **group**: the same layer and the
same magnitude band, a quantile band of the layer's neurons ranked by their mean
|pooled activation| over the probe's train examples (`magnitudes`, `bands`).

Draws are nested (draw r's first j neurons are the size-j control, its i-th neuron from
the group of the i-th top neuron), so every control size has ``n_random`` exchangeable
controls with exactly the top set's groups, and no top neuron is ever in a control.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from neurolens.probes.types import ProbeSet
from neurolens.store import Store, read_layer

Neuron = tuple[int, int]
Group = tuple[int, int]          # (layer, magnitude band)

#: magnitude bands per layer (quartiles), fewer where a band would hold fewer than
#: n_random + 1 neurons, so that every band can give a top neuron n_random distinct controls
N_BANDS = 4

__all__ = ["N_BANDS", "Group", "bands", "group_of", "magnitudes", "random_controls"]


def magnitudes(store: Store, model: str, probes: ProbeSet, layers: Sequence[int]) -> dict[int, np.ndarray]:
    """Per layer: each neuron's mean |pooled activation| over the train examples (both
    labels), from the stored activations: the size the controls are matched on."""
    train = np.fromiter((e.example_id for e in probes.split("train")), dtype=np.int64)
    out = {}
    for l in layers:
        ids, acts = read_layer(store, model, probes.concept, l)
        keep = np.isin(ids, train)
        a = acts[keep] if keep.any() else acts
        out[l] = np.abs(a.astype(np.float64)).mean(0)
    return out


def bands(mags: Mapping[int, np.ndarray], n_random: int, n_bands: int = N_BANDS) -> dict[int, np.ndarray]:
    """Per layer: each neuron's magnitude band, 0 (smallest) .. b-1 (largest), the layer's
    neurons split by rank into b equal bands, b = min(n_bands, N // (n_random + 1)) >= 1."""
    out = {}
    for l, m in mags.items():
        m = np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0)
        n = m.size
        b = max(1, min(n_bands, n // (n_random + 1)))
        rank = np.empty(n, dtype=np.int64)
        rank[np.argsort(m, kind="stable")] = np.arange(n)
        out[l] = (rank * b // max(n, 1)).astype(np.int64)
    return out


def group_of(band: Mapping[int, np.ndarray], x: Neuron) -> Group:
    return int(x[0]), int(band[x[0]][x[1]])


def _as_bands(spec: Mapping[int, np.ndarray] | Callable[[int], int], layers) -> dict[int, np.ndarray]:
    """A neuron-count callable means one band per layer (matching on layer alone)."""
    if callable(spec):
        return {l: np.zeros(int(spec(l)), dtype=np.int64) for l in layers}
    return {l: np.asarray(spec[l], dtype=np.int64) for l in layers}


def random_controls(top: Sequence[Neuron], band: Mapping[int, np.ndarray] | Callable[[int], int],
                    n_random: int, seed: int) -> tuple[list[list[Neuron]], dict[Group, list[Neuron]]]:
    """(nested draws, {group: random single neurons}).

    `band` is {layer: band of every neuron} (`bands`), or a neuron-count callable for
    layer-only matching. Draw r is a list of len(top) neurons, the i-th from the group of
    top[i], without repetition and never a top neuron; its prefixes are the controls of
    every size. The singles of top[0]'s group are the draws' first neurons."""
    rng = np.random.default_rng(seed)
    layers = sorted({l for l, _ in top})
    band = _as_bands(band, layers)
    groups = [group_of(band, x) for x in top]
    taken: dict[int, set[int]] = {}
    for l, n in top:
        taken.setdefault(l, set()).add(n)
    pools = {}
    for g in dict.fromkeys(groups):
        l, b = g
        members = np.flatnonzero(band[l] == b)
        pools[g] = np.setdiff1d(members, sorted(taken[l]))
    need = {g: groups.count(g) for g in pools}
    for g, p in pools.items():
        if len(p) < need[g]:
            raise ValueError(f"layer {g[0]} band {g[1]} has too few neurons outside the top set "
                             f"for random controls")
    g0 = groups[0] if top else None
    firsts = rng.choice(pools[g0], size=min(n_random, len(pools[g0])), replace=False) if top else []
    draws = []
    for r in range(n_random):
        perm = {g: rng.permutation(p) for g, p in pools.items()}
        if top and r < len(firsts):
            rest = perm[g0][perm[g0] != firsts[r]]
            perm[g0] = np.concatenate([[firsts[r]], rest])
        it = {g: iter(p) for g, p in perm.items()}
        draws.append([(g[0], int(next(it[g]))) for g in groups])
    singles: dict[Group, list[Neuron]] = {}
    if top:
        singles[g0] = list(dict.fromkeys(d[0] for d in draws))
    for g in sorted(pools):
        if g not in singles:
            pick = rng.choice(pools[g], size=min(n_random, len(pools[g])), replace=False)
            singles[g] = [(g[0], int(n)) for n in pick]
    return draws, singles
