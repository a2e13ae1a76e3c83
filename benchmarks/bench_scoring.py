"""Benchmark: scoring every neuron of a GPT-2-small-sized model for one concept.

Contender: ``ScoreAccumulator`` over 12 layers x 3072 neurons (numba backend),
computing all per-neuron statistics (AUC, group-level p, BH q, Cohen's d,
consistency, ranges, score, rank) with the examples in paired groups (20 per group).
Beside it, on the same inputs in the same run: the example-level scoring (no groups:
Welch on examples, the test before group-level inference), the group-level test alone
(cell means + t) and the elastic-net peer ranking on the best 2,000 neurons.
Baseline: a per-neuron loop of ``sklearn.metrics.roc_auc_score`` (AUC only),
timed on a sample of neurons and extrapolated linearly to all neurons.

    python benchmarks/bench_scoring.py [--smoke]

Prints a markdown table and writes benchmarks/results/scoring.json.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "scoring.json"

FULL = dict(n_examples=2000, n_layers=12, n_neurons=3072, baseline_sample=2000, repeats=3, probe_k=2000)
SMOKE = dict(n_examples=300, n_layers=2, n_neurons=256, baseline_sample=100, repeats=2, probe_k=200)


GROUP_SIZE = 20  # examples per paired group (10 concept, 10 other)


def make_groups(y: np.ndarray) -> np.ndarray:
    """Paired groups: concept and other examples dealt round-robin into n/GROUP_SIZE groups."""
    n_groups = max(2, y.shape[0] // GROUP_SIZE)
    g = np.empty(y.shape[0], np.int64)
    g[y == 1] = np.arange(int(y.sum())) % n_groups
    g[y == 0] = np.arange(int((y == 0).sum())) % n_groups
    return g


def make_inputs(n_examples: int, n_layers: int, n_neurons: int, seed: int = 0):
    """fp16 GELU-like activations, half positives, 5 planted neurons per layer."""
    rng = np.random.default_rng(seed)
    y = np.zeros(n_examples, dtype=np.int64)
    y[: n_examples // 2] = 1
    rng.shuffle(y)
    layers = []
    planted = []
    for layer in range(n_layers):
        x = rng.standard_normal((n_examples, n_neurons), dtype=np.float32)
        cols = rng.choice(n_neurons, size=5, replace=False)
        x[np.ix_(y == 1, cols)] += 1.0
        x = x * (0.5 * (1.0 + np.tanh(0.8 * x)))  # GELU-ish: many values near 0
        layers.append(x.astype(np.float16))
        planted += [(layer, int(c)) for c in cols]
    return layers, y, planted


class PeakRSS:
    """Peak resident set size (MB) of this process while the block runs, sampled."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self.start_mb = self.peak_mb = 0.0

    def _poll(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)
            time.sleep(self._interval)

    def __enter__(self):
        self.start_mb = self.peak_mb = self._proc.memory_info().rss / 2**20
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)

    @property
    def delta_mb(self) -> float:
        return self.peak_mb - self.start_mb


def contender(layers, y, groups=None):
    """Scores of every neuron; ``groups=None`` is the example-level test (Welch on examples)."""
    from neurolens.numerics import ScoreAccumulator

    acc = ScoreAccumulator(backend="numba")
    for layer, x in enumerate(layers):
        acc.add(layer, x, y, groups=groups)
    return acc.finalize()


def group_test_only(layers, y, groups):
    """Only the group-level p-values: cell means (numba) and the t-test on them."""
    from neurolens.numerics.groups import cell_means, group_test, make_design

    d = make_design(y, groups)
    return [group_test(cell_means(x, d), d)["p"] for x in layers]


def peer_probe(layers, y, k: int):
    """The elastic-net peer ranking: keep the best k columns by probeless score, fit."""
    from neurolens.numerics.peers import TopColumns, elastic_net_weights, probeless_score

    top = TopColumns(k)
    for layer, x in enumerate(layers):
        x32 = x.astype(np.float32)
        sc = probeless_score(x32[y == 1].mean(0), x32[y == 0].mean(0))
        top.add(sc, layer * x.shape[1] + np.arange(x.shape[1]), x)
    return elastic_net_weights(top.cols, y)


def baseline(layers, y, sample: int, seed: int = 1):
    """roc_auc_score per neuron on ``sample`` random neurons; returns (seconds, aucs, idx)."""
    from sklearn.metrics import roc_auc_score

    n_layers, n_neurons = len(layers), layers[0].shape[1]
    rng = np.random.default_rng(seed)
    flat = rng.choice(n_layers * n_neurons, size=min(sample, n_layers * n_neurons), replace=False)
    aucs = np.empty(flat.size)
    t0 = time.perf_counter()
    for i, f in enumerate(flat):
        layer, neuron = divmod(int(f), n_neurons)
        aucs[i] = roc_auc_score(y, layers[layer][:, neuron])
    return time.perf_counter() - t0, aucs, flat


def _versions() -> dict:
    import numba
    import scipy
    import sklearn

    return {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "scipy": scipy.__version__, "scikit-learn": sklearn.__version__}


def _machine() -> dict:
    import numba

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "numba_threads": numba.get_num_threads()}


def run(smoke: bool = False) -> dict:
    cfg = SMOKE if smoke else FULL
    layers, y, planted = make_inputs(cfg["n_examples"], cfg["n_layers"], cfg["n_neurons"])
    groups = make_groups(y)
    total = cfg["n_layers"] * cfg["n_neurons"]

    # warm-up: numba JIT (or cache load) outside the timed runs, reported separately
    t0 = time.perf_counter()
    contender([layers[0][:, :64]], y, groups)
    contender([layers[0][:, :64]], y)
    warmup_s = time.perf_counter() - t0

    times, peaks, ex_times, g_times, probe_times = [], [], [], [], []
    table = None
    for _ in range(cfg["repeats"]):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            table = contender(layers, y, groups)
            times.append(time.perf_counter() - t0)
        peaks.append(mem.delta_mb)
        t0 = time.perf_counter()
        contender(layers, y)
        ex_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        group_test_only(layers, y, groups)
        g_times.append(time.perf_counter() - t0)
    contender_s = statistics.median(times)
    example_s = statistics.median(ex_times)
    t0 = time.perf_counter()
    peer_probe(layers, y, cfg["probe_k"])
    probe_times.append(time.perf_counter() - t0)

    base_times = []
    for r in range(cfg["repeats"]):
        s, aucs, flat = baseline(layers, y, cfg["baseline_sample"], seed=1 + r)
        base_times.append(s)
        # same inputs, same answer
        assert np.allclose(aucs, table["auc"][flat], atol=1e-9), "baseline and contender disagree"
    sample = min(cfg["baseline_sample"], total)
    baseline_s = statistics.median(base_times) * total / sample

    ranked = {(int(table["layer"][i]), int(table["neuron"][i])) for i in np.flatnonzero(
        (table["rank"] >= 1) & (table["rank"] <= len(planted)))}
    result = {
        "benchmark": "scoring",
        "smoke": smoke,
        "sizes": {"n_examples": cfg["n_examples"], "n_layers": cfg["n_layers"],
                  "neurons_per_layer": cfg["n_neurons"], "neurons": total, "dtype": "float16",
                  "n_pos": int(y.sum()), "planted": len(planted)},
        "repeats": cfg["repeats"],
        "contender": {"name": f"ScoreAccumulator (numba), all statistics, group-level p "
                              f"({int(groups.max()) + 1} paired groups)",
                      "median_s": contender_s, "runs_s": times, "warmup_s": warmup_s,
                      "peak_rss_delta_mb": max(peaks), "neurons_per_s": total / contender_s},
        "example_level": {"name": "ScoreAccumulator (numba), all statistics, example-level p (Welch)",
                          "median_s": example_s, "runs_s": ex_times},
        "group_test_only": {"name": "group-level p alone (cell means + t)",
                            "median_s": statistics.median(g_times), "runs_s": g_times},
        "group_vs_example": contender_s / example_s,
        "peer_probe": {"name": f"elastic-net probe ranking (proximal Newton, best {cfg['probe_k']} by probeless)",
                       "seconds": probe_times[0]},
        "baseline": {"name": "sklearn roc_auc_score per neuron (AUC only)",
                     "sampled_neurons": sample, "sample_median_s": statistics.median(base_times),
                     "extrapolated_s": baseline_s, "note": f"timed on {sample} random neurons, "
                     f"extrapolated linearly to {total}"},
        "ratio": baseline_s / contender_s,
        "planted_in_top": len(ranked & set(planted)),
        "machine": _machine(),
        "versions": _versions(),
    }
    return result


def to_markdown(r: dict) -> str:
    s, c, b = r["sizes"], r["contender"], r["baseline"]
    lines = [
        f"Scoring {s['n_examples']} examples x {s['neurons']} neurons "
        f"({s['n_layers']} layers x {s['neurons_per_layer']}, fp16), median of {r['repeats']}",
        "",
        "| method | wall s | peak RSS delta MB | neurons/s |",
        "|---|---:|---:|---:|",
        f"| {c['name']} | {c['median_s']:.3f} | {c['peak_rss_delta_mb']:.1f} | {c['neurons_per_s']:,.0f} |",
        f"| {r['example_level']['name']} | {r['example_level']['median_s']:.3f} | – | "
        f"{s['neurons'] / r['example_level']['median_s']:,.0f} |",
        f"| {r['group_test_only']['name']} | {r['group_test_only']['median_s']:.3f} | – | "
        f"{s['neurons'] / r['group_test_only']['median_s']:,.0f} |",
        f"| {r['peer_probe']['name']} | {r['peer_probe']['seconds']:.2f} | – | – |",
        f"| {b['name']} | {b['extrapolated_s']:.2f} (extrapolated) | – | "
        f"{s['neurons'] / b['extrapolated_s']:,.0f} |",
        "",
        f"group-level / example-level scoring time: **{r['group_vs_example']:.2f}x**; "
        f"ratio: **{r['ratio']:.1f}x** faster than the baseline; baseline {b['note']}; "
        f"JIT warm-up {c['warmup_s']:.2f} s (not in the timings); "
        f"planted neurons in the top {s['planted']}: {r['planted_in_top']}/{s['planted']}",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks import common

    return common.main("scoring", run, to_markdown, argv, doc=__doc__,
                       smoke_help="tiny sizes (a few seconds)")


if __name__ == "__main__":
    sys.exit(main())
