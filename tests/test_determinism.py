"""The same command on the same machine gives the same numbers, whatever else the machine is
doing: no kernel is chosen by a race run at load time (docs/determinism.md). Two CLI runs of a
planted GPT-2, one with every core kept busy, give bit-identical activations and scores; the
runs table names the kernels; a store computed on other kernels is recomputed, not mixed."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from neurolens.engine.runtime import fast

pytestmark = pytest.mark.xdist_group("determinism")
LAYERS = ["0", "1", "2", "3"]


@contextlib.contextmanager
def busy_cores(n: int | None = None):
    """One spinning process per core, started here and stopped by pid."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(n or max(2, os.cpu_count() or 2))]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def neurolens_run(model: str, probes: Path, out: Path, env: dict) -> None:
    cmd = [sys.executable, "-m", "neurolens", "run", "--model", model, "--probes", str(probes),
           "--layers", *LAYERS, "--no-report", "--batch-size", "8", "--out", str(out), "--quiet"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]


def activations(out: Path) -> dict[int, np.ndarray]:
    """{layer: fp16 bits [n, N] in example order} as stored."""
    got = {}
    for d in sorted((out / "store" / "activations").glob("model=*/concept=*/layer=*")):
        t = pq.read_table(sorted(d.glob("*.parquet"))).sort_by("example_id")
        acts = t.column("acts").combine_chunks()
        got[int(d.name.split("=")[1])] = np.asarray(acts.flatten()).view(np.uint16).reshape(t.num_rows, -1)
    return got


def scores(out: Path) -> dict[str, np.ndarray]:
    d = next((out / "store" / "scores").glob("model=*/concept=*"))
    t = pq.read_table(sorted(d.glob("*.parquet"))).drop(["run_id"])
    t = t.sort_by([("layer", "ascending"), ("neuron", "ascending")])
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def runs(out: Path) -> list[dict]:
    rows = [pq.read_table(f).to_pylist()[0] for f in (out / "store" / "runs").glob("run-*.parquet")]
    return sorted(rows, key=lambda r: r["started_at"])


def markers(out: Path, table: str) -> list[dict]:
    return [json.loads(f.read_text()) for f in (out / "store" / table).rglob("_partition.json")]


@pytest.fixture(scope="module")
def two_runs(planted_factory, tmp_path_factory):
    """The same `neurolens run`, quiet, then with every core busy; one NeuroLens cache."""
    pm = planted_factory("gpt2")
    tmp = tmp_path_factory.mktemp("determinism")
    d = json.loads(pm.probe_file.read_text())
    for side in ("positive", "negative"):  # the loader rejects repeated examples
        seen: set = set()
        d[side] = [x for x in d[side] if not ((t := x["text"] if isinstance(x, dict) else x) in seen
                                              or seen.add(t))]
    probes = tmp / "probes.json"
    probes.write_text(json.dumps(d))
    env = dict(os.environ, NEUROLENS_CACHE=str(tmp / "cache"), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("NEUROLENS_CONV1D", None)
    neurolens_run(str(pm.path), probes, tmp / "quiet", env)
    stored = {f: f.stat().st_mtime_ns for f in (tmp / "cache" / "kernels").glob("*.json")} \
        if (tmp / "cache" / "kernels").is_dir() else {}
    with busy_cores():
        neurolens_run(str(pm.path), probes, tmp / "busy", env)
    return {"model": str(pm.path), "probes": probes, "env": env, "tmp": tmp, "stored": stored}


def test_busy_and_quiet_runs_give_bit_identical_activations_and_scores(two_runs):
    tmp = two_runs["tmp"]
    a, b = activations(tmp / "quiet"), activations(tmp / "busy")
    assert sorted(a) == [0, 1, 2, 3] and sorted(b) == sorted(a)
    for l in a:
        assert a[l].shape == b[l].shape and np.array_equal(a[l], b[l]), f"layer {l}"
    s, t = scores(tmp / "quiet"), scores(tmp / "busy")
    assert s.keys() == t.keys() and len(s["neuron"]) == 4 * 256
    assert {"selectivity", "p_value", "importance"} <= s.keys()
    for c in s:
        assert np.array_equal(s[c], t[c], equal_nan=s[c].dtype.kind == "f"), c
    # the busy run read the choices the quiet one stored: nothing timed again, nothing rewritten
    kdir = tmp / "cache" / "kernels"
    if fast.available():
        assert two_runs["stored"] and {f: f.stat().st_mtime_ns for f in kdir.glob("*.json")} == two_runs["stored"]


def test_runs_table_records_the_kernel_choices(two_runs):
    tmp = two_runs["tmp"]
    for out in ("quiet", "busy"):
        (row,) = runs(tmp / out)
        k = json.loads(row["versions"])["kernels"]
        assert k["threads"] >= 1 and k["linear"] in ("onednn", "torch")
        # planted GPT-2 (64 wide, 256 neurons): attention in/out and MLP in/out
        assert set(k["conv1d"]) == {"64x192", "64x64", "64x256", "256x64"}
        assert set(k["conv1d"].values()) <= {"onednn", "torch"}
        for m in markers(tmp / out, "activations"):
            assert m["kernels"] == k
    assert runs(tmp / "quiet")[0]["versions"] == runs(tmp / "busy")[0]["versions"]


@pytest.mark.skipif(not fast.available(), reason="this torch build has no oneDNN linear kernel")
def test_store_computed_on_other_kernels_is_recomputed_not_mixed(two_runs):
    """The same command on a store whose partitions came from other Conv1D kernels: every
    layer is extracted again and scored from the new activations alone."""
    tmp, out = two_runs["tmp"], two_runs["tmp"] / "quiet"
    (first,) = runs(out)
    before = json.loads(first["versions"])["kernels"]["conv1d"]
    flip = "torch" if "onednn" in before.values() else "onednn"
    neurolens_run(two_runs["model"], two_runs["probes"], out, {**two_runs["env"], "NEUROLENS_CONV1D": flip})
    first, second = runs(out)
    after = json.loads(second["versions"])["kernels"]
    assert set(after["conv1d"].values()) == {flip} and after["conv1d"] != before
    acts = markers(out, "activations")
    assert len(acts) == len(LAYERS)
    assert all(m["run_id"] == second["run_id"] and m["kernels"] == after for m in acts)
    (sc,) = markers(out, "scores")
    assert sc["run_id"] == second["run_id"]
    assert sc["key"] != next(iter(markers(tmp / "busy", "scores")))["key"]
