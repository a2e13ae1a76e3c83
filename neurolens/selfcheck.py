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
    #: the planted set's ablation verdict (engine/causal/ablation/verdict.py): p against
    #: magnitude-matched random sets, and specificity (drop over off-target drop)
    validated: bool = False
    p_value: float = float("nan")
    specificity: float = float("nan")

    @property
    def ok(self) -> bool:
        return (self.recall == 1.0 and self.surface_ok and self.decoy_ok is not False
                and self.random_sig_share <= MAX_RANDOM_SHARE and self.validated)


def check_family(family: str, root: Path, *, seed: int = 0, bars: Bars | None = None) -> FamilyCheck:
    from scipy.stats import spearmanr

    from neurolens.engine.models import registry
    from neurolens.engine.causal.ablation.controls import bands, magnitudes, random_controls
    from neurolens.engine.causal.ablation.executor import ablate_sets, base_confidence, relative_drop
    from neurolens.engine.causal.ablation.stage import neuron_stats
    from neurolens.engine.causal.ablation.verdict import empirical_p, qvalues, specificity, validated
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

    # mean-ablate the planted set against random sets of the same layers and magnitude bands
    # (never a planted, surface, polysemantic or decoy neuron); mean ablation, because the
    # planted units rest at a small level off the concept, and zeroing that costs every input
    conf = Confidence(adapter, pm.probes.examples)
    test = pm.probes.split("test")
    pos = np.array([e.label == 1 for e in test])
    layers = sorted({l for l, _ in pm.planted})
    store = Store(out / "store")
    band = bands(magnitudes(store, adapter.name, pm.probes, layers), N_RANDOM_SETS)
    for x in special.tolist():
        l, n = divmod(int(x), 1_000_000)
        if l in band and (l, n) not in set(pm.planted):
            band[l][n] = -1                      # never a control
    randoms, _ = random_controls(list(pm.planted), band, N_RANDOM_SETS, seed)
    values, _ = neuron_stats(store, adapter.name, pm.probes, layers, scores)
    with bars.stage(f"selfcheck ablate {family}", 1) as tick:
        base = base_confidence(adapter, conf, test)
        own = ablate_sets(adapter, conf, test, [list(pm.planted)], method="mean", values=values)[0]
        abl = ablate_sets(adapter, conf, [e for e, p in zip(test, pos) if p], randoms, method="mean",
                          values=values)
        tick(1)
    drop = float(relative_drop(base[pos], own[pos]))
    off = float(relative_drop(base[~pos], own[~pos]))
    null = relative_drop(base[pos], abl)
    z = float((drop - null.mean()) / max(null.std(ddof=1), 1e-12))
    p_value = empirical_p(drop, null)
    spec = float(specificity(drop, off))
    ok = bool(validated(qvalues([p_value])[0], spec))      # one set tested: q = p

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
    return FamilyCheck(family, k, recall, surface_ok, random_share, z, drop, rho,
                       decoy_ok, decoy_sel, ok, p_value, spec)
