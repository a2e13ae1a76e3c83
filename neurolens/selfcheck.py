"""Ground-truth checks: run the real pipeline on planted models and compare with the truth."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurolens.constants import ALPHA
from neurolens.progress import Bars

N_RANDOM_SETS = 30
#: the largest share of random (unplanted) neurons at q < 0.05 that still passes: they are
#: false discoveries, and the planted probes' groups are independent word pairs
MAX_RANDOM_SHARE = 0.05


@dataclass
class FamilyCheck:
    family: str
    k: int
    recall: float
    surface_ok: bool
    random_sig_share: float
    z: float
    drop: float
    importance_rho: float
    #: decoys (families that plant them: a gated MLP's act(gate)-only unit) are unranked
    decoy_ok: bool | None = None
    decoy_selectivity: float = float("nan")   # the largest |selectivity| of a decoy

    @property
    def ok(self) -> bool:
        return (self.recall == 1.0 and self.surface_ok and self.decoy_ok is not False
                and self.random_sig_share <= MAX_RANDOM_SHARE and self.z >= 3.0)


def check_family(family: str, root: Path, *, seed: int = 0, bars: Bars | None = None) -> FamilyCheck:
    from scipy.stats import spearmanr

    from neurolens.engine.models import registry
    from neurolens.engine.causal.ablation.executor import ablate_sets, base_confidence, relative_drop
    from neurolens.engine.causal.confidence import Confidence
    from neurolens.engine.causal.importance import attributions
    from neurolens.engine.planted.build import build_planted
    from neurolens.pipeline import RunConfig, run
    from neurolens.store import Store, read_table

    bars = bars or Bars(enabled=False)
    pm = build_planted(family, root / "models" / family, seed=seed)
    adapter = registry.load(str(pm.path))
    out = root / "out"
    run(RunConfig(model=str(pm.path), out=str(out), report=False, seed=seed, batch_size=16),
        adapter=adapter, probes=pm.probes, bars=bars)
    scores = read_table(Store(out / "store"), "scores", {"model": adapter.name, "concept": pm.probes.concept})
    layer = scores.column("layer").to_numpy()
    neuron = scores.column("neuron").to_numpy()
    rank = scores.column("rank").to_numpy(zero_copy_only=False).astype(float)
    q = scores.column("q_value").to_numpy()
    k = len(pm.planted)
    key = layer.astype(np.int64) * 1_000_000 + neuron
    planted = np.array([l * 1_000_000 + n for l, n in pm.planted])
    topk = key[rank <= k]
    recall = float(np.isin(planted, topk).mean())
    sl, sn = pm.surface
    surface_ok = bool(sl * 1_000_000 + sn not in set(topk.tolist()))
    decoys = np.array([l * 1_000_000 + n for l, n in pm.meta.get("decoys", [])], dtype=np.int64)
    decoy_ok = bool(np.isnan(rank[np.isin(key, decoys)]).all()) if decoys.size else None
    sel = scores.column("selectivity").to_numpy()
    decoy_sel = float(np.abs(sel[np.isin(key, decoys)]).max()) if decoys.size else float("nan")
    special = np.concatenate([planted, [sl * 1_000_000 + sn, pm.polysemantic[0] * 1_000_000 + pm.polysemantic[1]],
                              decoys])
    rnd = ~np.isin(key, special)
    random_share = float((q[rnd] < ALPHA).mean())

    # zero-ablate the planted set against random sets of the same size from the same layers
    conf = Confidence(adapter, pm.probes.examples)
    test_pos = pm.probes.split("test", label=1)
    rng = np.random.default_rng(seed)
    layers = [l for l, _ in pm.planted]
    randoms = []
    for _ in range(N_RANDOM_SETS):
        s = []
        for l in layers:
            while True:
                n = int(rng.integers(adapter.n_neurons(l)))
                if l * 1_000_000 + n not in set(special.tolist()) and (l, n) not in s:
                    break
            s.append((l, n))
        randoms.append(s)
    with bars.stage(f"selfcheck ablate {family}", 1) as tick:
        base = base_confidence(adapter, conf, test_pos)
        abl = ablate_sets(adapter, conf, test_pos, [list(pm.planted)] + randoms)
        tick(1)
    drops = relative_drop(base, abl)
    null = drops[1:]
    z = float((drops[0] - null.mean()) / max(null.std(ddof=1), 1e-12))

    # importance (one backward pass) against true single-neuron ablation, top 50 by importance
    train_pos = pm.probes.split("train", label=1)
    att = attributions(adapter, conf, train_pos, sorted(set(layer.tolist())))
    imp = np.concatenate([np.abs(att[l]).mean(0) for l in sorted(att)])
    ids = np.concatenate([[(l, n) for n in range(att[l].shape[1])] for l in sorted(att)])
    top50 = np.argsort(-imp)[:50]
    singles = [[(int(ids[i][0]), int(ids[i][1]))] for i in top50]
    b = base_confidence(adapter, conf, train_pos)
    a = ablate_sets(adapter, conf, train_pos, singles)
    true_drop = np.abs(b[None, :] - a).mean(1)
    rho = float(spearmanr(imp[top50], true_drop).statistic)
    return FamilyCheck(family, k, recall, surface_ok, random_share, z, float(drops[0]), rho,
                       decoy_ok, decoy_sel)
