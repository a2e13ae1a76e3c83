"""A small store in the exact schemas, written through Store.write_partition, for the query tests.

Two models with different depths ('bert-tiny': 4 layers × 64 neurons, 'roberta-tiny':
6 layers × 48 neurons), three concepts, scores with a planted set of significant
neurons (some significant for several concepts), ablations with some validated (and
rows that must not count: cumulative/random modes, a NaN z, a NaN drop), and the runs rows.
The same data is kept as polars frames (with the partition keys as columns) so the
tests can compute every query's answer independently.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from neurolens.engine.causal.ablation import verdict
from neurolens.store.layout import Store
from neurolens.store.schema import ABLATIONS, EXAMPLES, LABELS, RUNS, SCORES, TOP_EXAMPLES

MODELS = {"bert-tiny": (4, 64), "roberta-tiny": (6, 48)}
CONCEPTS = ("negation", "royalty", "past_tense")


@dataclass
class Synthetic:
    root: Path
    scores: pl.DataFrame
    ablations: pl.DataFrame
    runs: pl.DataFrame
    frames: dict[str, pl.DataFrame] = field(default_factory=dict)


def _scores(rng: np.random.Generator, n_layers: int, width: int, planted: np.ndarray) -> dict:
    n = n_layers * width
    layer = np.repeat(np.arange(n_layers, dtype=np.int32), width)
    neuron = np.tile(np.arange(width, dtype=np.int32), n_layers)
    depth = layer / (n_layers - 1)
    auc = rng.uniform(0.4, 0.6, n)
    auc[planted] = rng.uniform(0.8, 0.99, planted.size)
    selectivity = 2 * auc - 1
    p = rng.uniform(0.05, 1.0, n)
    p[planted] = 10.0 ** rng.uniform(-9, -4, planted.size)
    q = stats.false_discovery_control(p)   # Benjamini–Hochberg
    mean_neg = rng.normal(0, 0.1, n)
    std_pos, std_neg = rng.uniform(0.2, 1.0, n), rng.uniform(0.2, 1.0, n)
    cohens_d = selectivity * 3
    mean_pos = mean_neg + cohens_d * np.sqrt((std_pos**2 + std_neg**2) / 2)
    consistency = np.clip(selectivity + rng.normal(0, 0.05, n), 0, 1)
    importance = rng.exponential(1e-3, n)
    importance_pct = (np.argsort(np.argsort(importance)) + 1) / n * 100
    score = np.cbrt(np.maximum(selectivity, 0) * consistency * importance_pct / 100)
    sig = q < 0.05
    rank = np.full(n, -1, dtype=np.int64)
    idx = np.flatnonzero(sig)
    # ties on score are broken by (layer, neuron), as the ranking step does
    idx = idx[np.lexsort((neuron[idx], layer[idx], -score[idx]))]
    rank[idx] = np.arange(1, idx.size + 1)
    cohens_d[0] = np.nan  # a constant neuron: no effect size
    direction = np.where(selectivity > 0, 1, -1).astype(np.int8)
    effect = np.where(sig, rng.uniform(1.0, 3.0, n), rng.normal(0, 0.3, n)) * direction
    significant = sig & (direction == 1) & (effect >= 0.8)
    q_test = np.where(significant, q, np.nan)
    cols = {
        "layer": layer, "neuron": neuron, "n_layers": np.full(n, n_layers, np.int32), "depth": depth,
        "selectivity": selectivity, "auc": auc, "cohens_d": cohens_d, "mean_pos": mean_pos,
        "mean_neg": mean_neg, "std_pos": std_pos, "std_neg": std_neg, "p_value": p, "q_value": q,
        "consistency": consistency, "tpr_at_5fpr": consistency, "effect": effect, "direction": direction,
        "significant": significant, "opposite": np.zeros(n, bool), "lexical": np.zeros(n, bool),
        "importance": importance, "importance_pct": importance_pct,
        "score": score,
        "rank": pa.array(rank, mask=rank < 0, type=pa.int32()),
        "range_lo": mean_pos - 2 * std_pos, "range_hi": mean_pos + 2 * std_pos,
        "range_overlap": rng.uniform(0, 0.3, n),
        "n_units": np.full(n, 24, np.int32), "selectivity_test": selectivity, "p_test": p,
        "q_test": pa.array(q_test, from_pandas=True), "replicated": q_test < 0.05,
        "rank_probeless": pa.nulls(n, pa.int32()),
        "rank_probe": pa.nulls(n, pa.int32()),
    }
    return cols


def build(root: Path, seed: int = 7) -> Synthetic:
    rng = np.random.default_rng(seed)
    store = Store(root)
    t0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
    score_frames, abl_frames, run_rows = [], [], []
    for mi, (model, (n_layers, width)) in enumerate(MODELS.items()):
        n = n_layers * width
        shared = rng.choice(n, size=6, replace=False)  # significant for every concept
        for ci, concept in enumerate(CONCEPTS):
            run_id = f"r{mi}{ci}-{model}-{concept}"
            own = rng.choice(np.setdiff1d(np.arange(n), shared), size=10 + 3 * ci, replace=False)
            planted = np.concatenate([shared, own])
            cols = _scores(rng, n_layers, width, planted)
            cols["run_id"] = np.full(n, run_id)
            table = pa.Table.from_pydict(cols, schema=SCORES)
            store.write_partition("scores", {"model": model, "concept": concept}, table,
                                  key=run_id, run_id=run_id)
            score_frames.append(pl.from_arrow(table).with_columns(
                model=pl.lit(model), concept=pl.lit(concept)))

            # ablations of the 8 best-ranked neurons, by two methods, and controls that never count
            ranked = table.filter(pc.is_valid(table["rank"])).sort_by("rank")
            top_l = ranked["layer"].to_numpy()[:8]
            top_n = ranked["neuron"].to_numpy()[:8]
            rows = []
            for method in ("zero", "mean"):
                z = rng.normal(3.0, 2.0, top_l.size)
                if method == "zero" and ci == 0:
                    z[1] = np.nan  # random_drop_std was 0
                for l, nr, zz in zip(top_l, top_n, z):
                    rows.append(dict(method=method, mode="single", k=1, layer=int(l), neuron=int(nr),
                                     z=float(zz)))
            rows.append(dict(method="zero", mode="cumulative", k=8, layer=int(top_l[0]),
                             neuron=int(top_n[0]), z=25.0))
            rows.append(dict(method="zero", mode="random", k=8, layer=int(top_l[0]),
                             neuron=int(top_n[0]), z=9.0))
            m = len(rows)
            base = rng.uniform(0.5, 0.9, m)
            drop = rng.uniform(0.0, 0.4, m)
            off = rng.uniform(0, 0.05, m)
            zs = np.array([r["z"] for r in rows])
            tested = np.array([r["mode"] != "random" for r in rows])
            pv = np.where(np.isfinite(zs), stats.norm.sf(np.nan_to_num(zs)), np.nan)
            if ci == 1:
                drop[0] = np.nan          # a NaN drop: NaN specificity, never validated
            qv = np.full(m, np.nan)
            for meth in ("zero", "mean"):
                sel = tested & (np.array([r["method"] for r in rows]) == meth)
                qv[sel] = verdict.qvalues(pv[sel])
            spec = np.where(tested, verdict.specificity(drop, off), np.nan)
            val = verdict.validated(qv, spec)
            abl = pa.Table.from_pydict({
                "method": [r["method"] for r in rows], "mode": [r["mode"] for r in rows],
                "k": [r["k"] for r in rows], "layer": [r["layer"] for r in rows],
                "neuron": [r["neuron"] for r in rows],
                "metric": ["readout_prob"] * m, "base_conf": base, "ablated_conf": base * (1 - drop),
                "drop": drop, "random_drop_mean": np.full(m, 0.02), "random_drop_std": np.full(m, 0.03),
                "z": [r["z"] for r in rows], "off_target_drop": off,
                "n_examples": np.full(m, 40, np.int32),
                "n_controls": np.full(m, 99, np.int32), "p_value": pv, "q_value": qv,
                "specificity": spec, "validated": val, "band": np.zeros(m, np.int32),
                "neurons": [[f"{r['layer']}:{r['neuron']}"] for r in rows],
                "run_id": [run_id] * m,
            }, schema=ABLATIONS)
            store.write_partition("ablations", {"model": model, "concept": concept}, abl,
                                  key=run_id, run_id=run_id)
            abl_frames.append(pl.from_arrow(abl).with_columns(model=pl.lit(model), concept=pl.lit(concept)))

            # a few examples and top examples, so those views hold rows too
            ex = pa.Table.from_pydict({
                "example_id": [0, 1], "text": ["the king rules", "it is not here"], "label": [1, 0],
                "grp": ["a", "b"], "split": ["train", "test"], "target": [None, None],
                "span_start": [None, None], "span_end": [None, None], "pair_id": [None, None],
                "run_id": [run_id] * 2,
            }, schema=EXAMPLES)
            store.write_partition("examples", {"model": model, "concept": concept}, ex, key=run_id,
                                  run_id=run_id)
            te = pa.Table.from_pydict({
                "layer": [int(top_l[0])], "neuron": [int(top_n[0])], "example_id": [0],
                "activation": [1.5], "tokens": [["the", "king"]], "token_acts": [[0.1, 1.5]],
                "run_id": [run_id],
            }, schema=TOP_EXAMPLES)
            store.write_partition("top_examples", {"model": model, "concept": concept}, te, key=run_id,
                                  run_id=run_id)

            started = t0 + dt.timedelta(minutes=10 * (3 * mi + ci))
            run_rows.append(dict(
                run_id=run_id, model=model, model_ref=f"local/{model}", model_sha="0" * 40,
                concept=concept, probe_sha="1" * 40, n_pos=40, n_neg=40,
                layers=list(range(n_layers)), pooling="mean", device="cpu", world_size=1,
                tokens=int(800 + 10 * ci), seconds_extract=1.5 + mi, seconds_score=0.25 * (ci + 1),
                seconds_ablate=None if ci == 2 else 3.0, versions='{"neurolens": "0.1.0"}',
                status="done", dtype="float32", started_at=started,
                finished_at=started + dt.timedelta(seconds=5),
            ))
        lab = pa.Table.from_pydict({
            "layer": [0], "neuron": [1], "family": ["lexical"], "label": ["negation words"],
            "top_tokens": [["not", "never"]], "concepts": [["negation"]], "polysemantic": [False],
            "explanation_score": [0.7], "run_id": [f"r{mi}0-{model}-negation"],
        }, schema=LABELS)
        store.write_partition("labels", {"model": model}, lab, key="l", run_id=f"r{mi}0-{model}-negation")

    # a run that failed before writing anything
    run_rows.append(dict(
        run_id="r99-failed", model="bert-tiny", model_ref="local/bert-tiny", model_sha="0" * 40,
        concept="royalty", probe_sha="1" * 40, n_pos=40, n_neg=40, layers=[0, 1], pooling="mean",
        device="cpu", world_size=1, tokens=0, seconds_extract=None, seconds_score=None,
        seconds_ablate=None, versions="{}", status="failed", dtype="float32", started_at=None,
        finished_at=None,
    ))
    for r in run_rows:
        store.write_run(pa.Table.from_pylist([r], schema=RUNS), r["run_id"])

    runs = pl.from_arrow(pa.Table.from_pylist(run_rows, schema=RUNS))
    return Synthetic(root=root, scores=pl.concat(score_frames), ablations=pl.concat(abl_frames), runs=runs)
