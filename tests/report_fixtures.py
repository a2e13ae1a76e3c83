"""A synthetic but realistic store for the report tests and the report benchmark.

Everything goes through `Store.write_partition` / `Store.write_run` in the exact
schemas of `neurolens.store.schema`. Activations are drawn per example with a few
planted concept neurons; the scores are then computed from those activations the
way DESIGN "Scores" defines them (train split), so every chart and card agrees with
the numbers in the scores table.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from scipy import stats

from neurolens.store import SCHEMAS, Store, activations_schema

XSS_TEXT = "The king wrote <script>alert(1)</script> and <b>bold</b> in the margin."
XSS_LABEL = "crown </script><script>alert(2)</script> & <i>co</i>"

CONCEPTS = {
    "royalty": ("social", ["king", "queen", "prince", "throne", "crown", "duke"],
                ["farmer", "teacher", "baker", "driver", "clerk", "nurse"]),
    "negation": ("grammar", ["not", "never", "no", "nobody", "nothing", "neither"],
                 ["always", "often", "yes", "somebody", "everything", "either"]),
    "past_tense": ("grammar", ["walked", "ran", "saw", "wrote", "sang", "built"],
                   ["walks", "runs", "sees", "writes", "sings", "builds"]),
    "plural": ("morphology", ["cats", "dogs", "houses", "trees", "cars", "books"],
               ["cat", "dog", "house", "tree", "car", "book"]),
}
GROUPS = ("simple", "question", "embedded", "list")
FAMILIES = ("social", "grammar", "morphology", "position", "punctuation")


@dataclass
class ModelSpec:
    name: str
    n_layers: int
    n_neurons: int
    modality: str = "text"
    concepts: list[str] = field(default_factory=lambda: list(CONCEPTS))
    random_rows: bool = True        # random ablation sets as rows, else only mean/std
    top_examples: bool = True       # write the top_examples table
    labels: bool = True


def default_models(n_neurons: int = 256) -> list[ModelSpec]:
    return [
        ModelSpec("gpt2", 12, n_neurons),
        ModelSpec("bert-base-uncased", 6, n_neurons, random_rows=False, top_examples=False),
    ]


def _sentences(concept: str, rng: np.random.Generator, n_pos: int, n_neg: int):
    _, pos_words, neg_words = CONCEPTS.get(concept, CONCEPTS["royalty"])
    frames = {
        "simple": "The {w} arrived at noon.",
        "question": "Did the {w} see the river?",
        "embedded": "She said that the {w} had left early.",
        "list": "Bread, salt, the {w}, and a lamp.",
    }
    rows = []
    for label, n, words in ((1, n_pos, pos_words), (0, n_neg, neg_words)):
        for i in range(n):
            grp = GROUPS[i % len(GROUPS)]
            w = words[int(rng.integers(len(words)))]
            text = frames[grp].format(w=w)
            rows.append((label, grp, text, w))
    return rows


def _scores(acts: np.ndarray, label: np.ndarray, train: np.ndarray, importance: np.ndarray,
            n_layers: int, n_neurons: int) -> dict[str, np.ndarray]:
    """acts: [examples, layers*neurons] float32 → the DESIGN "Scores" columns."""
    a = acts[train]
    y = label[train]
    pos, neg = a[y == 1], a[y == 0]
    n1, n0 = len(pos), len(neg)
    ranks = stats.rankdata(a, axis=0)
    auc = (ranks[y == 1].sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)
    mp, mn = pos.mean(0), neg.mean(0)
    sp, sn = pos.std(0, ddof=1), neg.std(0, ddof=1)
    s_pooled = np.sqrt(((n1 - 1) * sp**2 + (n0 - 1) * sn**2) / (n1 + n0 - 2))
    d = (mp - mn) / np.maximum(s_pooled, 1e-6)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = stats.ttest_ind(pos, neg, equal_var=False).pvalue
    p = np.nan_to_num(p, nan=1.0)
    q = stats.false_discovery_control(p)   # Benjamini–Hochberg
    p95 = np.quantile(neg, 0.95, axis=0)
    tpr = (pos > p95).mean(0)
    consistency = auc                      # no groups: every example a unit, P(+ unit > - unit)
    effect = (mp - mn) / np.maximum(np.sqrt((sp**2 + sn**2) / 2), 1e-6)
    direction = np.where(mp > mn, 1, -1)
    significant = (q < 0.05) & (direction == 1) & (effect >= 0.8)
    opposite = (q < 0.05) & (direction == -1) & (effect <= -0.8)
    imp_pct = stats.rankdata(importance) / importance.size
    sel = 2 * auc - 1
    score = np.cbrt(np.maximum(sel, 0) * consistency * imp_pct)
    rank = np.zeros(sel.size, dtype=np.int32)
    sig = np.flatnonzero(significant)
    rank[sig[np.argsort(-score[sig], kind="stable")]] = np.arange(1, sig.size + 1)
    lo, hi = mp - 2 * sp, mp + 2 * sp
    overlap = ((neg >= lo) & (neg <= hi)).mean(0)
    layer = np.repeat(np.arange(n_layers), n_neurons)
    neuron = np.tile(np.arange(n_neurons), n_layers)
    # held-out replication on the test rows (examples are the units here: no groups)
    ta, ty = acts[~train], label[~train]
    t1, t0 = (ty == 1).sum(), (ty == 0).sum()
    tr = stats.rankdata(ta, axis=0)
    sel_t = 2 * (tr[ty == 1].sum(0) - t1 * (t1 + 1) / 2) / (t1 * t0) - 1
    sign = np.sign(mp - mn)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p_gt = stats.ttest_ind(ta[ty == 1], ta[ty == 0], equal_var=False, alternative="greater").pvalue
    p_test = np.nan_to_num(np.where(sign > 0, p_gt, 1 - p_gt), nan=1.0)
    q_test = np.full(sel.size, np.nan)
    if sig.size:
        q_test[sig] = stats.false_discovery_control(p_test[sig])
    replicated = q_test < 0.05
    return dict(layer=layer, neuron=neuron, selectivity=sel, auc=auc, cohens_d=d, mean_pos=mp,
                n_units=np.full(sel.size, n1 + n0), selectivity_test=sel_t, p_test=p_test,
                q_test=pa.array(q_test, from_pandas=True), replicated=replicated, effect=effect,
                direction=direction, significant=significant, opposite=opposite,
                lexical=np.zeros(sel.size, bool), tpr_at_5fpr=tpr,
                mean_neg=mn, std_pos=sp, std_neg=sn, p_value=p, q_value=q,
                consistency=consistency, importance=importance, importance_pct=imp_pct,
                score=score, rank=rank, range_lo=lo, range_hi=hi, range_overlap=overlap,
                n_layers=np.full(sel.size, n_layers),
                depth=layer / max(n_layers - 1, 1))


def _table(name: str, cols: dict, run_id: str) -> pa.Table:
    schema = SCHEMAS[name]
    n = len(next(iter(cols.values())))
    data = {}
    for f in schema:
        if f.name == "run_id":
            data[f.name] = pa.array([run_id] * n, pa.string())
        else:
            v = cols.get(f.name)
            data[f.name] = pa.array([None] * n, f.type) if v is None else pa.array(v, f.type)
    return pa.table(data, schema=schema)


def _write_image(path: Path, rng: np.random.Generator, stripes: bool) -> None:
    from PIL import Image

    h = w = 48
    img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    if stripes:
        period = int(rng.integers(4, 9))
        band = (np.arange(w) // period) % 2 == 0
        img[:, band] = np.array([230, 180, 40], dtype=np.uint8)
    else:
        img[16:32, 16:32] = rng.integers(100, 255, size=3, dtype=np.uint8)
    Image.fromarray(img).save(path)


def build_model_concept(store: Store, spec: ModelSpec, concept: str, *, n_pos: int, n_neg: int,
                        seed: int, image_dir: Path | None = None) -> None:
    rng = np.random.default_rng(seed)
    run_id = hashlib.sha1(f"{spec.name}/{concept}/{seed}".encode()).hexdigest()[:12]
    L, N = spec.n_layers, spec.n_neurons
    parts = {"model": spec.name, "concept": concept}

    # -- examples --------------------------------------------------------------------
    if spec.modality == "vision":
        assert image_dir is not None
        image_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for label, n in ((1, n_pos), (0, n_neg)):
            for i in range(n):
                p = image_dir / f"{spec.name}-{concept}-{label}-{i}.png"
                _write_image(p, rng, stripes=bool(label))
                rows.append((label, ("fine", "coarse")[i % 2], str(p), None))
    else:
        rows = _sentences(concept, rng, n_pos, n_neg)
        if concept == "royalty":    # probe text is user data: it must show as text
            rows[0] = (1, rows[0][1], XSS_TEXT, "king")
    n_ex = len(rows)
    label = np.array([r[0] for r in rows], dtype=np.int8)
    grp = [r[1] for r in rows]
    split = np.where(rng.random(n_ex) < 0.7, "train", "test")
    split[:4] = "train"
    split[n_pos:n_pos + 4] = "train"
    texts = [r[2] for r in rows]
    spans_s = [t.find(r[3]) if r[3] else None for t, r in zip(texts, rows)]
    spans_e = [s + len(r[3]) if s is not None and s >= 0 else None for s, r in zip(spans_s, rows)]
    spans_s = [s if s is not None and s >= 0 else None for s in spans_s]
    store.write_partition("examples", parts, _table("examples", dict(
        example_id=np.arange(n_ex, dtype=np.int32), text=texts, label=label, grp=grp,
        split=split.tolist(), target=[None] * n_ex, span_start=spans_s, span_end=spans_e,
        pair_id=[i % max(n_pos, 1) for i in range(n_ex)]), run_id), key=run_id, run_id=run_id)

    # -- activations, with planted concept neurons ----------------------------------
    acts = rng.standard_normal((n_ex, L * N), dtype=np.float32) * 0.6
    acts += rng.normal(0, 0.3, size=L * N).astype(np.float32)
    cidx = list(CONCEPTS).index(concept) if concept in CONCEPTS else 0
    center = (0.3 + 0.2 * cidx) * (L - 1)                        # each concept peaks at its own depth
    n_strong, n_weak = 12, max(8, (L * N) // 80)     # a few clear neurons, many faint ones
    n_plant = n_strong + n_weak
    layers = np.clip(np.round(rng.normal(center, L / 6, n_plant)), 0, L - 1).astype(int)
    planted, first = np.unique(layers * N + rng.integers(0, N, n_plant), return_index=True)
    effect = np.where(first < n_strong, rng.uniform(0.9, 2.6, planted.size),
                      rng.uniform(0.25, 0.7, planted.size)).astype(np.float32)
    grp_arr = np.array(grp)
    gain = np.where(grp_arr == "list", 0.4, 1.0).astype(np.float32)     # one phrasing is weaker
    acts[np.ix_(label == 1, planted)] += np.outer(gain[label == 1], effect)
    if texts[0] == XSS_TEXT:        # make sure the hostile text is among the top examples
        acts[0, planted[first < n_strong]] += 2.5
    acts = np.maximum(acts, -0.17)                                      # GELU-like floor
    acts16 = acts.astype(np.float16)
    for layer in range(L):
        block = acts16[:, layer * N:(layer + 1) * N]
        arr = pa.FixedSizeListArray.from_arrays(pa.array(block.ravel(), pa.float16()), N)
        t = pa.table({"example_id": pa.array(np.arange(n_ex, dtype=np.int32)), "acts": arr,
                      "run_id": pa.array([run_id] * n_ex)}, schema=activations_schema(N))
        store.write_partition("activations", {**parts, "layer": layer}, t, key=run_id, run_id=run_id)

    # -- scores ----------------------------------------------------------------------
    importance = rng.gamma(1.0, 0.01, L * N)
    importance[planted] += rng.uniform(0.02, 0.08, planted.size)
    sc = _scores(acts16.astype(np.float32), label, split == "train", importance, L, N)
    store.write_partition("scores", parts, _table("scores", sc, run_id), key=run_id, run_id=run_id)

    # -- ablations -------------------------------------------------------------------
    sig = np.flatnonzero(sc["significant"])
    top = sig[np.argsort(-sc["score"][sig])][:10]
    cols: dict[str, list] = {k: [] for k in SCHEMAS["ablations"].names if k != "run_id"}

    def add(**kw):
        for k in cols:
            cols[k].append(kw.get(k))

    base = 0.82
    for method, strength in (("zero", 1.0), ("mean", 0.75), ("range", 0.9)):
        for i, f in enumerate(top):
            drop = float(strength * rng.uniform(0.03, 0.12) * (1.0 if i < 6 else 0.2))
            rm, rs = 0.004, 0.01
            add(method=method, mode="single", k=1, layer=int(f // N), neuron=int(f % N),
                metric="readout", base_conf=base, ablated_conf=base * (1 - drop), drop=drop,
                random_drop_mean=rm, random_drop_std=rs, z=(drop - rm) / rs,
                off_target_drop=float(rng.uniform(0, 0.01)), n_examples=int(n_pos * 0.3),
                neurons=[f"L{f // N}.N{f % N}"])
        for k in (1, 2, 5, 10):
            k_eff = min(k, len(top))
            drop = float(strength * (1 - np.exp(-0.25 * k_eff)) * 0.7)
            rd = rng.normal(0.01 * k, 0.012 * np.sqrt(k), 24).clip(-0.02, None)
            add(method=method, mode="cumulative", k=k, metric="readout", base_conf=base,
                ablated_conf=base * (1 - drop), drop=drop, random_drop_mean=float(rd.mean()),
                random_drop_std=float(rd.std(ddof=1)), z=float((drop - rd.mean()) / rd.std(ddof=1)),
                off_target_drop=float(drop * 0.1), n_examples=int(n_pos * 0.3),
                neurons=[f"L{f // N}.N{f % N}" for f in top[:k_eff]])
            if spec.random_rows:
                for r in rd:
                    add(method=method, mode="random", k=k, metric="readout", base_conf=base,
                        ablated_conf=base * (1 - r), drop=float(r), n_examples=int(n_pos * 0.3))
    _verdicts(cols)
    store.write_partition("ablations", parts, _table("ablations", cols, run_id), key=run_id, run_id=run_id)

    # -- top examples ------------------------------------------------------------------
    if spec.top_examples and spec.modality == "text":
        te: dict[str, list] = {k: [] for k in ("layer", "neuron", "example_id", "activation",
                                                 "tokens", "token_acts")}
        for f in top:
            col = acts[:, f]
            for ex in np.argsort(-col)[:5]:
                toks = texts[ex].replace(".", " .").replace("?", " ?").replace(",", " ,").split(" ")
                ta = rng.uniform(-0.1, 0.3, len(toks)).astype(np.float32)
                hit = rows[ex][3]
                for j, tok in enumerate(toks):
                    if hit and hit in tok:
                        ta[j] = float(col[ex])
                te["layer"].append(int(f // N))
                te["neuron"].append(int(f % N))
                te["example_id"].append(int(ex))
                te["activation"].append(float(col[ex]))
                te["tokens"].append(toks)
                te["token_acts"].append(ta.tolist())
        store.write_partition("top_examples", parts, _table("top_examples", te, run_id),
                              key=run_id, run_id=run_id)

    # -- the run -------------------------------------------------------------------------
    t0 = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=seed)
    run = dict(run_id=[run_id], model=[spec.name], model_ref=[f"hub:{spec.name}"],
               model_sha=[hashlib.sha1(spec.name.encode()).hexdigest()[:12]], concept=[concept],
               probe_sha=[hashlib.sha1(concept.encode()).hexdigest()[:16]], n_pos=[n_pos],
               n_neg=[n_neg], layers=[list(range(L))], pooling=["concept" if spec.modality == "text"
                                                                 else "spatial_mean"],
               device=["cpu"], world_size=[1], tokens=[n_ex * 12], seconds_extract=[3.2],
               seconds_score=[0.4], seconds_ablate=[11.5], versions=['{"neurolens": "0.1.0"}'],
               status=["complete"], dtype=["float32"], started_at=[t0],
               finished_at=[t0 + dt.timedelta(seconds=15)])
    store.write_run(_table("runs", run, run_id), run_id)


def _verdicts(cols: dict[str, list]) -> None:
    """p (normal tail of z, a stand-in for the controls), BH q per method over the tested
    rows, specificity and `validated`, through the one definition."""
    from scipy import stats

    from neurolens.engine.causal.ablation import verdict

    n = len(cols["mode"])
    z = np.array([np.nan if v is None else v for v in cols["z"]], dtype=float)
    tested = np.array([m != "random" for m in cols["mode"]])
    p = np.where(tested & np.isfinite(z), stats.norm.sf(np.nan_to_num(z)), np.nan)
    q = np.full(n, np.nan)
    for meth in set(cols["method"]):
        sel = tested & (np.array(cols["method"]) == meth)
        q[sel] = verdict.qvalues(p[sel])
    drop = np.array(cols["drop"], dtype=float)
    off = np.array([np.nan if v is None else v for v in cols["off_target_drop"]], dtype=float)
    spec = verdict.specificity(drop, off)
    val = verdict.validated(q, spec)
    cols["p_value"] = [None if np.isnan(x) else float(x) for x in p]
    cols["q_value"] = [None if np.isnan(x) else float(x) for x in q]
    cols["specificity"] = [None if np.isnan(x) else float(x) for x in spec]
    cols["validated"] = [bool(x) for x in val]


def build_labels(store: Store, spec: ModelSpec, seed: int) -> None:
    """One labels partition per model: every neuron significant for some concept gets a label."""
    import duckdb

    from neurolens.store import connect

    con: duckdb.DuckDBPyConnection = connect(store.root)
    sig = con.execute(
        "SELECT layer, neuron, list(DISTINCT concept ORDER BY concept) AS concepts "
        "FROM scores WHERE model = ? AND significant AND NOT lexical AND concept NOT LIKE '%+control' "
        "GROUP BY ALL ORDER BY layer, neuron",  # labels name concepts, never a lexical control
        [spec.name]).fetchall()
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: [] for k in ("layer", "neuron", "family", "label", "top_tokens",
                                             "concepts", "polysemantic", "explanation_score")}
    best = con.execute(
        "SELECT arg_max(layer, score), arg_max(neuron, score) FROM scores "
        "WHERE model = ? AND concept = 'royalty' AND significant AND NOT lexical", [spec.name]).fetchall()[0]
    for layer, neuron, concepts in sig:
        fam = CONCEPTS[concepts[0]][0] if concepts[0] in CONCEPTS and rng.random() < 0.75 \
            else FAMILIES[int(rng.integers(len(FAMILIES)))]
        words = CONCEPTS.get(concepts[0], CONCEPTS["royalty"])[1]
        cols["layer"].append(layer)
        cols["neuron"].append(neuron)
        cols["family"].append(fam)
        cols["label"].append(XSS_LABEL if (layer, neuron) == best else
                             f"{concepts[0].replace('_', ' ')} words" if len(concepts) == 1
                             else " / ".join(concepts))
        cols["top_tokens"].append(list(rng.choice(words, 3, replace=False)))
        cols["concepts"].append(list(concepts))
        cols["polysemantic"].append(len(concepts) > 1)
        cols["explanation_score"].append(float(rng.uniform(0.3, 0.9)))
    run_id = f"labels-{spec.name}"
    store.write_partition("labels", {"model": spec.name}, _table("labels", cols, run_id),
                          key=run_id, run_id=run_id)


def build_store(root: str | Path, models: list[ModelSpec] | None = None, *, n_pos: int = 60,
                n_neg: int = 60, seed: int = 0, image_dir: Path | None = None) -> Store:
    """Write a complete synthetic store under `root` and return it."""
    store = Store(root)
    models = models if models is not None else default_models()
    for mi, spec in enumerate(models):
        for ci, concept in enumerate(spec.concepts):
            build_model_concept(store, spec, concept, n_pos=n_pos, n_neg=n_neg,
                                seed=seed + 100 * mi + ci, image_dir=image_dir)
        if spec.labels:
            build_labels(store, spec, seed + mi)
    return store
