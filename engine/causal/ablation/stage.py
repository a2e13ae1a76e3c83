"""Causal ablation of the top concept neurons, against random-neuron controls (DESIGN: "Ablation").

For the top-k neurons of a model × concept (by `rank` in the scores table) and each
method (`zero`, `mean`, `range`), the pipeline measures on the **test** split:

* ``single``: each top neuron alone, compared with ``n_random`` random single neurons
  of its group (same layer, same magnitude band: `controls`);
* ``cumulative``: the top-1..j neurons together at the control sizes j
  (`control_sizes`: 1, 2, 5, 10 and k itself; the curve), each compared with
  ``n_random`` random sets of j neurons with the same multiset of groups;
* ``random``: the control sets themselves, one row each.

The random sets are nested (`controls.random_controls`) and serve every method, so
methods differ only in what is written. What repeats is measured once: cumulative k = 1
is the single top-1, the size-1 controls of the first top neuron's group are its single
controls, and every distinct set goes through `ablate_sets` once per method. Only
``zero`` runs by default; ``mean`` and ``range`` on request. A control's drop is all its
p needs, so controls run on the concept test examples alone, the top sets on every test
example.

``drop`` = (base − ablated)/base of the mean confidence over concept test examples;
``off_target_drop`` the same over non-concept test examples (null on control rows);
``p_value`` the empirical p of the drop among its controls, ``q_value`` BH over the
tested sets, ``specificity`` and ``validated`` as `verdict` defines them (the one
definition). ``z`` = (drop − mean random drop)/std random drop (ddof = 1) is for display
only. Random rows carry a leave-one-out p and z against the other controls of their
size, which shows how chance alone looks.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from neurolens.engine.causal.ablation.controls import (Group, bands, group_of, magnitudes,
                                                        random_controls)
from neurolens.engine.causal.ablation.executor import (METHODS, Neuron, ablate_sets, base_confidence,
                                                        relative_drop)
from neurolens.engine.causal.ablation.verdict import (empirical_p, qvalues, sequential_p, specificity,
                                                       stop_after, stop_index, validated)
from neurolens.engine.models.adapters.base import Adapter
from neurolens.engine.models.naming import neuron_id
from neurolens.engine.runtime.progress import stage as progress_stage
from neurolens.probes.types import Example, ProbeSet
from neurolens.store import SCHEMAS, Store, read_layer, read_table
from neurolens.store.top import top_order

ABLATE_VERSION = 5
MODES = ("single", "cumulative", "random")
#: controls per tested set: p = (1 + #{controls >= drop}) / (N + 1) resolves 0.01, which passes
#: BH at ALPHA = 0.05 over a top-10's 13 tested sets whenever at least 3 of them beat every
#: control (a lone set would need N >= 259, 2.6x the controls' cost; docs/ablation.md)
N_RANDOM = 99
CONTROL_SIZES = (1, 2, 5, 10)
DEFAULT_METHODS = ("zero",)

__all__ = ["ABLATE_VERSION", "CONTROL_SIZES", "DEFAULT_METHODS", "METHODS", "MODES", "N_RANDOM",
           "ablate_sets", "control_sizes", "distinct_sets", "split_sets", "parse_methods", "base_confidence",
           "relative_drop", "top_neurons", "neuron_stats", "random_controls", "ablation_rows",
           "run_ablations", "zscore", "control_queues", "controls_needed", "measure_controls"]


def top_neurons(store: Store, model: str, concept: str, k: int) -> tuple[list[Neuron], pa.Table]:
    """The top-k (layer, neuron) by rank; when fewer than k pass q < 0.05 the rest are the
    next best by score. Returns them with the scores table."""
    t = read_table(store, "scores", {"model": model, "concept": concept})
    order = top_order(t, k, fill=True)
    lay = t.column("layer").to_numpy()
    neu = t.column("neuron").to_numpy()
    return [(int(lay[i]), int(neu[i])) for i in order], t


def neuron_stats(store: Store, model: str, probes: ProbeSet, layers: Sequence[int], scores: pa.Table
                 ) -> tuple[dict[int, np.ndarray], dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Per layer: the mean pooled activation over non-concept TRAIN examples (from the
    stored activations), and the concept range [range_lo, range_hi] from the scores."""
    neg_train = {e.example_id for e in probes.split("train", label=0)}
    values, ranges = {}, {}
    lay = scores.column("layer").to_numpy()
    neu = scores.column("neuron").to_numpy()
    lo = scores.column("range_lo").to_numpy(zero_copy_only=False).astype(float)
    hi = scores.column("range_hi").to_numpy(zero_copy_only=False).astype(float)
    for l in layers:
        ids, acts = read_layer(store, model, probes.concept, l)
        keep = np.isin(ids, np.fromiter(neg_train, dtype=np.int64, count=len(neg_train)))
        values[l] = acts[keep].astype(np.float64).mean(0)
        rl = np.full(acts.shape[1], np.inf)
        rh = np.full(acts.shape[1], -np.inf)
        sel = lay == l
        rl[neu[sel]] = lo[sel]
        rh[neu[sel]] = hi[sel]
        ranges[l] = (rl, rh)
    return values, ranges


def control_sizes(k: int, sizes: Sequence[int] = CONTROL_SIZES) -> list[int]:
    """The set sizes that get random controls: the fixed sizes up to k, and k itself."""
    return sorted({s for s in sizes if 1 <= s <= k} | ({k} if k >= 1 else set()))


def parse_methods(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """'zero,mean' or a sequence -> checked, deduplicated methods in the order given."""
    items = spec.split(",") if isinstance(spec, str) else list(spec or DEFAULT_METHODS)
    out: list[str] = []
    for m in (x.strip() for x in items):
        if not m:
            continue
        if m not in METHODS:
            raise ValueError(f"unknown ablation method {m!r}; choose from {', '.join(METHODS)}")
        if m not in out:
            out.append(m)
    if not out:
        raise ValueError("name at least one ablation method")
    return tuple(out)


def distinct_sets(top: Sequence[Neuron], draws: Sequence[Sequence[Neuron]],
                  singles: Mapping[Group, list[Neuron]], sizes: Sequence[int]) -> list[list[Neuron]]:
    """Every set the rows need, each once: top singles, top prefixes, the controls'
    prefixes at the control sizes, and the single controls of every layer."""
    uniq: dict[tuple, list[Neuron]] = {}
    for s in (_top_sets(top, sizes) + [list(d[:j]) for d in draws for j in sizes]
              + [[x] for xs in singles.values() for x in xs]):
        uniq.setdefault(_key(s), s)
    return list(uniq.values())


def _key(s: Sequence[Neuron]) -> tuple:
    return tuple(sorted(s))


def _top_sets(top: Sequence[Neuron], sizes) -> list[list[Neuron]]:
    """The top singles and the top prefixes at `sizes`."""
    return [[x] for x in top] + [list(top[:j]) for j in sizes]


def split_sets(top: Sequence[Neuron], sets: Sequence[Sequence[Neuron]]
               ) -> tuple[list[list[Neuron]], list[list[Neuron]]]:
    """(the top singles and prefixes, the controls): the first are measured on every test
    example (drop and off-target drop), the controls on the concept examples alone."""
    mine = {_key(s) for s in _top_sets(top, range(1, len(top) + 1))}
    own: list[list[Neuron]] = []
    ctrl: list[list[Neuron]] = []
    for s in sets:
        (own if _key(s) in mine else ctrl).append(list(s))
    return own, ctrl


def zscore(drop: float, null: np.ndarray) -> tuple[float, float, float]:
    """(mean, std, z) of `drop` against the control drops (ddof = 1)."""
    null = np.asarray(null, dtype=float)
    mu = float(null.mean()) if null.size else float("nan")
    sd = float(null.std(ddof=1)) if null.size > 1 else float("nan")
    if not np.isfinite(sd):
        z = float("nan")
    elif sd > 0:
        z = (drop - mu) / sd
    else:
        z = 0.0 if drop == mu else float(np.sign(drop - mu) * np.inf)
    return mu, sd, float(z)


def control_queues(top: Sequence[Neuron], draws: Sequence[Sequence[Neuron]],
                   singles: Mapping[Group, list[Neuron]], sizes: Sequence[int],
                   band: Mapping[int, np.ndarray]) -> list[tuple[str, Any, list, list]]:
    """(kind, group or size, tested sets, their controls in drawn order), one per null:
    ("single", group) the top singles of a group with its single controls, and
    ("cumulative", j) the top prefix of size j with the draws' prefixes of size j. The
    order of the controls is the sequential test's."""
    queues: list[tuple[str, Any, list, list]] = []
    for g, xs in singles.items():
        tested = [[x] for x in top if group_of(band, x) == g]
        if tested:
            queues.append(("single", g, tested, [[x] for x in xs]))
    for j in sorted(sizes):
        queues.append(("cumulative", j, [list(top[:j])], [list(d[:j]) for d in draws]))
    return queues


def _measured(drops: Mapping[tuple, tuple], controls: Sequence[Sequence[Neuron]]) -> np.ndarray:
    """The drops of the controls measured so far: the longest measured prefix of the queue."""
    out = []
    for s in controls:
        got = drops.get(_key(s))
        if got is None:
            break
        out.append(got[2])
    return np.array(out, dtype=np.float64)


def controls_needed(drops: Mapping[tuple, tuple], tested: Sequence[Sequence[Neuron]],
                    controls: Sequence[Sequence[Neuron]], h: int | None) -> int | None:
    """How many of `controls` (in order) the sequential tests of `tested` read, given the
    drops measured so far; None while those do not decide every test yet."""
    null = _measured(drops, controls)
    need = 0
    for s in tested:
        i = stop_index(drops[_key(s)][2], null, h, len(controls))
        if i is None:
            return None
        need = max(need, i)
    return need


def ablation_rows(method: str, metric: str, top: Sequence[Neuron], draws: Sequence[Sequence[Neuron]],
                  singles: dict[Group, list[Neuron]], drops: dict[tuple, tuple[float, float, float, float]],
                  n_examples: int, sizes: Sequence[int] | None = None,
                  band: Mapping[int, np.ndarray] | None = None, stop: int | None = None) -> list[dict]:
    """Rows of the ablations table for one method. `drops[set key]` =
    (base_conf, ablated_conf, drop, off_target_drop) measured for that set; random
    controls (z, p) at `sizes` (default: every size). `band` gives each neuron's magnitude
    band (default: one band per layer). `stop` is the sequential test's h (None: every
    control is read): each null keeps the controls its tests read, in drawn order, and
    only those get rows. The tested rows (single, cumulative) get their q-value over the
    distinct tested sets, their specificity and the verdict."""
    sizes = set(range(1, len(top) + 1) if sizes is None else sizes)
    band = band if band is not None else {l: defaultdict(int) for l, _ in top}
    rows = []

    def row(mode, s, k, layer, neuron, null, p):
        base, abl, drop, off = drops[_key(s)]
        mu, sd, z = zscore(drop, null)
        rows.append(dict(method=method, mode=mode, k=k, layer=layer, neuron=neuron, metric=metric,
                         base_conf=base, ablated_conf=abl, drop=drop, random_drop_mean=mu,
                         random_drop_std=sd, z=z, off_target_drop=off, n_examples=n_examples,
                         neurons=[neuron_id(l, n) for l, n in s], band=int(band[layer][neuron]),
                         n_controls=int(len(null)), p_value=p,
                         q_value=None, specificity=None, validated=False))

    def random_rows(controls, null):
        for r, c in enumerate(controls):
            others = np.delete(null, r)
            row("random", c, len(c), c[-1][0], c[-1][1], others, empirical_p(drops[_key(c)][2], others))

    read: dict[tuple[str, Any], tuple[list, np.ndarray]] = {}
    for kind, at, tested, controls in control_queues(top, draws, singles, sizes, band):
        n = controls_needed(drops, tested, controls, stop)
        if n is None:
            raise ValueError("the sequential test needs controls that were not measured")
        read[kind, at] = controls[:n], np.array([drops[_key(c)][2] for c in controls[:n]])
    for x in top:
        null = read["single", group_of(band, x)][1]
        row("single", [x], 1, x[0], x[1], null, sequential_p(drops[_key([x])][2], null, stop))
    for j in sorted(sizes):
        l, n = top[j - 1]
        controls, null = read["cumulative", j]
        row("cumulative", list(top[:j]), j, l, n, null,
            sequential_p(drops[_key(top[:j])][2], null, stop))
        random_rows(controls, null)
    g0 = group_of(band, top[0])
    for g in singles:
        if g != g0 and ("single", g) in read:      # g0's are the size-1 prefixes above
            random_rows(*read["single", g])
    _verdicts([r for r in rows if r["mode"] != "random"])
    return rows


def _verdicts(tested: list[dict]) -> None:
    """q-value (BH over the distinct tested sets: cumulative k = 1 is the top-1 single),
    specificity and `validated`, in place."""
    uniq: dict[tuple, float] = {}
    for r in tested:
        uniq.setdefault(tuple(sorted(r["neurons"])), r["p_value"])
    q = dict(zip(uniq, qvalues(np.array(list(uniq.values()), dtype=float))))
    for r in tested:
        r["q_value"] = float(q[tuple(sorted(r["neurons"]))])
        r["specificity"] = float(specificity(r["drop"], np.nan if r["off_target_drop"] is None
                                             else r["off_target_drop"]))
        r["validated"] = bool(validated(r["q_value"], r["specificity"]))


def run_ablations(adapter: Adapter, probes: ProbeSet, store: Store, *, top_k: int = 10, seed: int = 0,
                  batch_size: int = 32, key: str, run_id: str, confidence=None, bars=None,
                  methods: Sequence[str] = DEFAULT_METHODS, n_random: int = N_RANDOM,
                  sizes: Sequence[int] = CONTROL_SIZES, replicas: int | None = None,
                  sequential: bool = True) -> pa.Table:
    """Ablate the top-k neurons (each method × mode) and publish the `ablations` partition.
    `sequential` (default) measures each null's controls until its tests stop
    (`verdict.stop_after`): the same verdicts as every control, for less work."""
    from neurolens.engine.causal.confidence import Confidence

    methods = parse_methods(methods)
    if n_random < 2:
        raise ValueError("n_random must be at least 2 to estimate a spread")
    parts = {"model": adapter.name, "concept": probes.concept}
    conf = confidence or Confidence(adapter, probes.examples, batch_size=batch_size)
    top, scores = top_neurons(store, adapter.name, probes.concept, top_k)
    schema = SCHEMAS["ablations"]
    if not top:
        table = schema.empty_table()
        store.write_partition("ablations", parts, table, key=key, run_id=run_id)
        return table
    test = ablation_examples(probes)
    pos = np.array([e.label == 1 for e in test])
    layers = sorted({l for l, _ in top})
    band = bands(magnitudes(store, adapter.name, probes, layers), n_random)
    draws, singles = random_controls(top, band, n_random, seed)
    csizes = control_sizes(len(top), sizes)
    sets = distinct_sets(top, draws, singles, csizes)
    values = ranges = None
    if any(m in ("mean", "range") for m in methods):
        values, ranges = neuron_stats(store, adapter.name, probes, layers, scores)
    own, ctrl = split_sets(top, sets)
    queues = control_queues(top, draws, singles, csizes, band)
    stop = stop_after(n_random) if sequential else None
    concept = [e for e, p in zip(test, pos) if p]
    bs = max(1, batch_size // 2)
    total = len(test) + len(methods) * ((len(test) if own else 0) + (len(concept) if ctrl else 0))
    rows: list[dict] = []
    stage = progress_stage(bars, "ablate", total)
    with stage as tick:
        base = base_confidence(adapter, conf, test, batch_size=bs)
        tick(len(test))
        b_on = float(base[pos].mean())
        for method in methods:
            kw = dict(method=method, values=values, ranges=ranges, batch_size=bs, replicas=replicas,
                      progress=tick)
            drops = {}
            abl = ablate_sets(adapter, conf, test, own, **kw)
            on, off = relative_drop(base[pos], abl[:, pos]), relative_drop(base[~pos], abl[:, ~pos])
            for i, s in enumerate(own):
                drops[_key(s)] = (b_on, float(abl[i, pos].mean()), float(on[i]), float(off[i]))
            # controls: only their drop enters a test, so only the concept examples are run
            share = _Share(tick, len(concept) if ctrl else 0, len(ctrl))

            def measure(sets):
                abl = ablate_sets(adapter, conf, concept, sets, **{**kw, "progress": share.of(len(sets))})
                on = relative_drop(base[pos], abl)
                for i, s in enumerate(sets):
                    drops[_key(s)] = (b_on, float(abl[i].mean()), float(on[i]), None)

            measure_controls(measure, queues, drops, stop)
            share.finish()
            rows += ablation_rows(method, conf.metric, top, draws, singles, drops, int(pos.sum()),
                                  csizes, band, stop=stop)
    for r in rows:
        r["run_id"] = run_id
    table = pa.Table.from_pylist(rows, schema=schema)
    store.write_partition("ablations", parts, table, key=key, run_id=run_id)
    return table



#: controls each undecided null gets per round of the sequential test, in units of h: a
#: set near the controls' median stops after about 2h of them
ROUND = 4


def measure_controls(measure, queues, drops: dict, h: int | None) -> None:
    """Measure controls in rounds, each null's next ones in drawn order, until every test
    is decided (`controls_needed`); `measure(sets)` fills `drops`. Which controls are read
    for a verdict depends on the order alone, never on the rounds: only the cost does."""
    longest = max((len(q[3]) for q in queues), default=0)
    step = longest if h is None else ROUND * h
    upto = 0
    while upto < longest:
        upto += step
        want: dict[tuple, list[Neuron]] = {}
        for _, _, tested, controls in queues:
            if controls_needed(drops, tested, controls, h) is None:
                for c in controls[:upto]:
                    if _key(c) not in drops:
                        want.setdefault(_key(c), c)
        if not want:
            return
        measure(list(want.values()))


class _Share:
    """Progress of the controls in units of examples, as if every control were measured:
    a round of m of the n control sets advances the bar by m/n of its examples, and the
    sets the sequential test skipped are ticked off at the end."""

    def __init__(self, tick, examples: int, sets: int):
        self.tick, self.total, self.sets = tick, examples, max(sets, 1)
        self.done, self.acc = 0, 0.0

    def of(self, m: int):
        def advance(n: int) -> None:
            self.acc += n * m / self.sets
            step = min(int(self.acc) - self.done, self.total - self.done)
            if step > 0:
                self.done += step
                self.tick(step)
        return advance

    def finish(self) -> None:
        if self.total > self.done:
            self.tick(self.total - self.done)
            self.done = self.total


def ablation_examples(probes: ProbeSet) -> list[Example]:
    """The examples ablation is measured on: the test split."""
    return probes.split("test")
