"""Concept families: hierarchical clustering of the labelled neurons' selectivity profiles and
activation correlations."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neurolens.engine.labels.evidence import Evidence

FAMILY_CUT = 0.2        # average-linkage distance at which the family tree is cut
PROFILE_WEIGHT = 0.6    # family distance = w · profile distance + (1 − w) · activation distance


def families(ev: Evidence, corr: np.ndarray | None, members: np.ndarray) -> np.ndarray:
    """[n] family names. `members` are the neurons clustered directly (rows of `corr`);
    the others join the family whose mean selectivity profile is nearest (cosine)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist, squareform

    P = ev.sel / np.maximum(np.linalg.norm(ev.sel, axis=1, keepdims=True), 1e-12)
    Pm = P[members]
    if members.size == 1:
        lab = np.array([1])
    else:
        d = np.clip(pdist(Pm, "cosine"), 0.0, 1.0)
        if corr is not None:
            dact = squareform(np.clip((1.0 - corr) / 2.0, 0.0, 1.0), checks=False)
            d = PROFILE_WEIGHT * d + (1.0 - PROFILE_WEIGHT) * dact
        lab = fcluster(linkage(d, "average"), t=FAMILY_CUT, criterion="distance")
    k = int(lab.max())
    onehot = np.zeros((members.size, k))
    onehot[np.arange(members.size), lab - 1] = 1.0
    centre = (onehot.T @ ev.sel[members]) / onehot.sum(0)[:, None]               # [k, c]
    cn = centre / np.maximum(np.linalg.norm(centre, axis=1, keepdims=True), 1e-12)
    cluster = np.argmax(P @ cn.T, axis=1)                                         # everyone: nearest centre
    cluster[members] = lab - 1
    names = np.array([_family_name(centre[i], ev.concepts) for i in range(k)], dtype=object)
    return names[cluster]


def _family_name(profile: np.ndarray, concepts: Sequence[str]) -> str:
    order = np.argsort(-profile, kind="stable")
    top = profile[order[0]]
    keep = [concepts[i] for i in order[:2] if profile[i] > 0 and profile[i] >= 0.5 * top]
    return "+".join(keep) if keep else "unlabelled"
