"""Crash safety: `kill -9` at any point then the same command again gives the scores of an
uninterrupted run; readers never see a partial partition; concurrent writers share a store;
leftovers of killed runs are cleaned, a live run's staging never is."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from neurolens.store import MARKER, Store

pytestmark = pytest.mark.xdist_group("resume")
LAYERS = ["0", "1", "2", "3"]


def _probes(planted_factory, tmp_path: Path, concept: str = "royalty") -> tuple[str, Path, int]:
    pm = planted_factory("gpt2")
    d = json.loads(pm.probe_file.read_text())
    for side in ("positive", "negative"):  # the loader rejects repeated examples
        seen: set = set()
        d[side] = [x for x in d[side] if not ((t := x["text"] if isinstance(x, dict) else x) in seen
                                              or seen.add(t))]
    d["concept"] = concept
    f = tmp_path / f"probes-{concept}.json"
    f.write_text(json.dumps(d))
    return str(pm.path), f, len(d["positive"]) + len(d["negative"])


def _cmd(model: str, probes: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "neurolens", "run", "--model", model, "--probes", str(probes),
            "--layers", *LAYERS, "--no-importance", "--no-report", "--batch-size", "8",
            "--out", str(out)]


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def scores(out: Path, concept: str = "royalty") -> dict[str, np.ndarray]:
    d = next((out / "store" / "scores").glob(f"model=*/concept={concept}"))
    t = pq.read_table(sorted(d.glob("*.parquet"))).drop(["run_id"])
    t = t.sort_by([("layer", "ascending"), ("neuron", "ascending")])
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def same_scores(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for c in a:
        x, y = a[c], b[c]
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=c)
            np.testing.assert_allclose(x[~np.isnan(x)], y[~np.isnan(y)], rtol=1e-12, err_msg=c)
        else:
            np.testing.assert_array_equal(x, y, err_msg=c)


class Reader(threading.Thread):
    """Reads every published partition over and over, as a user's query would, and records
    any that is visible without its marker, with files other than the marker's, or with a
    row count other than the complete one."""

    def __init__(self, store: Path, n_examples: int):
        super().__init__(daemon=True)
        self.store, self.n = store, n_examples
        self.stop, self.bad, self.seen = threading.Event(), [], 0

    def expected(self, table: str, rows: int) -> bool:
        if table in ("activations", "examples"):
            return rows == self.n
        if table == "scores":
            return rows == 256 * len(LAYERS)
        return rows > 0

    def check(self, leaf: Path) -> None:
        table = leaf.relative_to(self.store).parts[0]
        names = {p.name for p in leaf.iterdir()}
        if not names:
            return  # a parent folder made just before its first partition is renamed in: no rows
        if MARKER not in names:
            self.bad.append(f"{leaf}: visible without {MARKER}")
            return
        marker = json.loads((leaf / MARKER).read_text())
        files = sorted(n for n in names if n.endswith(".parquet"))
        if files != marker["files"]:
            self.bad.append(f"{leaf}: files {files} != marker's {marker['files']}")
        rows = sum(pq.ParquetFile(leaf / f).metadata.num_rows for f in files)
        if not self.expected(table, rows):
            self.bad.append(f"{leaf}: {rows} rows")
        self.seen += 1

    def run(self) -> None:
        while not self.stop.is_set():
            for table in ("examples", "activations", "scores", "top_examples", "labels"):
                for leaf in (self.store / table).glob("**/*=*"):
                    try:
                        if any(p.is_dir() for p in leaf.iterdir()):
                            continue  # not a leaf: a model= folder above its partitions
                        self.check(leaf)
                    except FileNotFoundError:
                        pass  # replaced while listed: the next pass reads the new one
            self.duck()
            time.sleep(0.01)

    def duck(self) -> None:
        import duckdb

        from neurolens.store import connect

        try:
            con = connect(self.store, threads=1)
            for (rows,) in con.execute(
                    "select count(*) from activations group by concept, layer").fetchall():
                if rows != self.n:
                    self.bad.append(f"duckdb activations: {rows} rows")
            for (rows,) in con.execute("select count(*) from scores group by concept").fetchall():
                if rows != 256 * len(LAYERS):
                    self.bad.append(f"duckdb scores: {rows} rows")
            con.close()
        except (duckdb.IOException, FileNotFoundError):
            pass


def _kill_when(cmd: list[str], ready) -> str:
    """Start `cmd`, SIGKILL it the moment `ready()` holds; say how far it got."""
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while p.poll() is None:
            if ready():
                p.send_signal(signal.SIGKILL)
                p.wait()
                return "killed"
            time.sleep(0.005)
        return f"finished ({p.returncode})"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_scores(planted_factory, tmp_path):
    model, probes, n = _probes(planted_factory, tmp_path)
    # the uninterrupted run, in-process
    from neurolens.pipeline import RunConfig, run

    ref = tmp_path / "ref"
    run(RunConfig(model=model, probes=str(probes), layers=[int(l) for l in LAYERS], importance=False,
                  report=False, out=str(ref), batch_size=8))

    out = tmp_path / "out"
    store = out / "store"
    staging = store / "_staging"
    reader = Reader(store, n)
    reader.start()
    points = {
        # mid-extraction: the run's staging folder holds a layer file not yet published
        "extract-staged": lambda: any(staging.glob("run-*/layer=*/*.parquet")),
        # some layers published, scores not yet
        "activations": lambda: (store / "activations").exists()
        and any((store / "activations").glob("**/layer=1/_partition.json")),
        # scores published, labels and top examples not yet
        "scores": lambda: any((store / "scores").glob("**/_partition.json")),
    }
    got = {name: _kill_when(_cmd(model, probes, out), ready) for name, ready in points.items()}
    assert list(got.values()).count("killed") >= 2, got
    r = subprocess.run(_cmd(model, probes, out), env=_env(), capture_output=True, text=True,
                       timeout=600)
    reader.stop.set()
    reader.join(timeout=30)
    assert r.returncode == 0, r.stderr
    assert reader.bad == [], reader.bad[:5]
    assert reader.seen > 0
    same_scores(scores(out), scores(ref))
    # the killed runs' staging is gone once the next run has started and finished
    left = [p.name for p in staging.iterdir() if not p.name.startswith(".")]
    assert left == [], left
    # and their rows no longer say `running`: the last run saw nobody held their locks
    import pyarrow.parquet as pq

    status = sorted(pq.read_table(f).column("status")[0].as_py()
                    for f in (store / "runs").glob("run-*.parquet"))
    n_killed = list(got.values()).count("killed")
    assert status.count("killed") == n_killed and "running" not in status, status
    assert status.count("done") == len(status) - n_killed, status


@pytest.mark.slow
def test_concurrent_writers_share_one_store(planted_factory, tmp_path):
    model, probes, n = _probes(planted_factory, tmp_path)
    _, other, _ = _probes(planted_factory, tmp_path, concept="royalty2")
    out = tmp_path / "out"
    cmds = [_cmd(model, probes, out), _cmd(model, other, out), _cmd(model, probes, out)]
    ps = [subprocess.Popen(c, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for c in cmds]
    reader = Reader(out / "store", n)
    reader.start()
    res = [p.communicate(timeout=600) for p in ps]
    reader.stop.set()
    reader.join(timeout=30)
    assert [p.returncode for p in ps] == [0, 0, 0], [r[1][-2000:] for r in res]
    assert reader.bad == [], reader.bad[:5]
    from neurolens.store import connect

    con = connect(out / "store")
    got = dict(con.execute("select concept, count(*) from scores group by concept").fetchall())
    assert got == {"royalty": 256 * len(LAYERS), "royalty2": 256 * len(LAYERS)}
    acts = con.execute("select concept, layer, count(*) from activations group by all").fetchall()
    assert sorted(acts) == sorted((c, int(l), n) for c in ("royalty", "royalty2") for l in LAYERS)
    status = [s for (s,) in con.execute("select status from runs").fetchall()]
    assert status == ["done"] * 3
    for concept in ("royalty", "royalty2"):  # every published partition reads back whole
        assert len(scores(out, concept)["neuron"]) == 256 * len(LAYERS)


# -- staging -------------------------------------------------------------------------------
def _hold(root: Path, owner: str) -> subprocess.Popen:
    code = (f"import sys, time; from neurolens.store import Store; s = Store({str(root)!r}); "
            f"s.claim({owner!r}); (s.root / '_staging' / {owner!r}).mkdir(); "
            "print('ready', flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_reap_runs_marks_dead_running_rows_only(tmp_path):
    from neurolens.pipeline import _run_row

    store = Store(tmp_path / "store")
    store.ensure()
    live = _hold(store.root, "run-live")
    dead = _hold(store.root, "run-dead")
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    for run_id, status in (("live", "running"), ("dead", "running"), ("gone", "running"),
                           ("ok", "done"), ("bad", "failed")):
        store.write_run(_run_row(run_id=run_id, model="m", concept="c", status=status), run_id)
    try:
        assert sorted(store.reap_runs()) == ["dead", "gone"]   # "gone" never had a lock left
        import pyarrow.parquet as pq

        got = {f.stem[4:]: pq.read_table(f).to_pylist()[0] for f in (store.root / "runs").glob("run-*.parquet")}
        assert {k: v["status"] for k, v in got.items()} == {
            "live": "running", "dead": "killed", "gone": "killed", "ok": "done", "bad": "failed"}
        assert got["dead"]["model"] == "m"                     # the rest of the row is kept
        assert store.reap_runs() == []
    finally:
        live.kill()
        live.wait()


def test_clean_staging_removes_dead_runs_never_live_ones(tmp_path):
    store = Store(tmp_path / "store")
    store.ensure()
    mine = store.staging()                  # this (live) process's
    live = _hold(store.root, "run-live")    # another live run's
    dead = _hold(store.root, "run-dead")
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    old = store.root / "_staging" / "old-trash"
    old.mkdir()
    os.utime(old, (0, 0))
    fresh = store.root / "_staging" / "old-fresh"
    fresh.mkdir()
    try:
        removed = store.clean_staging(older_than_s=3600)
        assert sorted(removed) == ["old-trash", "run-dead"]
        assert mine.exists() and (store.root / "_staging" / "run-live").exists() and fresh.exists()
        assert not (store.root / "_staging" / ".run-dead.lock").exists()
    finally:
        live.kill()
        live.wait()
    assert store.clean_staging(older_than_s=3600) == ["run-live"]
    assert mine.exists()


def test_publish_keeps_an_identical_partition(tmp_path):
    import pyarrow as pa

    store = Store(tmp_path / "store")
    parts = {"model": "m", "concept": "c"}
    t = pa.table({"x": [1, 2, 3]})
    first = store.write_partition("examples", parts, t, key="k1", run_id="r1")
    files = sorted(p.name for p in first.iterdir())
    store.write_partition("examples", parts, t, key="k1", run_id="r2")  # same work: kept
    assert sorted(p.name for p in first.iterdir()) == files
    store.write_partition("examples", parts, t, key="k2", run_id="r3")  # new work: replaced
    assert json.loads((first / MARKER).read_text())["run_id"] == "r3"
    assert [p.name for p in (store.root / "_staging").iterdir() if not p.name.startswith(".")] == []
