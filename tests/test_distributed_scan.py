"""A corpus scan's shards on Ray workers against the same scan in this process: the same
tables, bit for bit, whichever executor computed a shard, and a scan begun by one executor
resumes on the other."""
from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest

import distributed_fixtures as fx
from distributed_fixtures import free_port
from tests.test_scan import mixed_corpus

weed, s3, ray_cluster = fx.weed, fx.s3, fx.ray_cluster   # the session's server and cluster

pytestmark = pytest.mark.xdist_group("distributed")

LAYERS = [1, 2]
KW = dict(layers=LAYERS, k=8, length=16, batch_size=8, shards=4, progress=False)
#: a total order of each table's rows (an interval sample's rank counts within its bin)
ORDER = {"corpus_top": ["layer", "neuron", "kind", "bin", "rank", "excerpt_id", "position"],
         "neuron_stats": ["layer", "neuron"]}


def tables(out) -> dict[str, pl.DataFrame]:
    import neurolens as nl

    s = nl.Store(out)
    return {t: s.sql(f"select * exclude (run_id) from {t} order by model, corpus, {', '.join(o)}")
            for t, o in ORDER.items()}


def assert_equal(a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame], *, skip: tuple[str, ...] = ()) -> None:
    """Every column but `skip`, bit for bit (NaN equal to NaN: the samples' empty windows)."""
    for t in ORDER:
        x, y = a[t], b[t]
        assert x.height > 0 and x.columns == y.columns and x.height == y.height, (t, x.shape, y.shape)
        for c in x.columns:
            if c not in skip:
                assert x[c].equals(y[c]), f"{t}.{c} differs"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    f = tmp_path_factory.mktemp("corpus") / "mixed.txt"
    f.write_text("\n".join(mixed_corpus(120).texts))
    return str(f)


@pytest.fixture(scope="module")
def model(planted_factory):
    import neurolens as nl

    return nl.load(planted_factory("gpt2").path, device="cpu")


@pytest.fixture(scope="module")
def reference(model, corpus, tmp_path_factory):
    """The in-process scan, cut into the same 4 shards."""
    out = tmp_path_factory.mktemp("inprocess") / "out"
    r = model.scan(corpus, out=out, **KW)
    assert r.scanned == LAYERS
    return tables(out)


def test_a_scan_in_4_shards_over_ray_equals_the_in_process_scan(model, corpus, reference, ray_cluster,
                                                                tmp_path):
    import neurolens as nl

    out = tmp_path / "ray"
    r = nl.scan(model, corpus, out=out, executor="ray", address=ray_cluster, **KW)
    assert r.scanned == LAYERS and r.tokens > 0
    got = tables(out)
    assert_equal(got, reference)
    assert set(got["corpus_top"]["kind"]) == {"top", "interval", "random"}
    assert not list((out / "store" / "_scans").rglob("shard-*.pt"))    # work files gone once published
    # one shard in one process: the same rows; the float64 moments agree to rounding (merged
    # from 4 shards in a fixed order, they are summed in another order than from 1)
    one = tmp_path / "one"
    model.scan(corpus, out=one, **{**KW, "shards": 1})
    single = tables(one)
    assert_equal(got, single, skip=("mean", "std"))
    for c in ("mean", "std"):
        x, y = got["neuron_stats"][c].to_numpy(), single["neuron_stats"][c].to_numpy()
        assert abs(x - y).max() <= 1e-12 * max(1.0, abs(y).max()), c


def _first_two(runner):
    """`runner` given shards 0 and 1 only: the scan stops there as a killed one would."""
    def run(ex, layers, edges, s, shards, progress):
        return runner(ex, layers, edges, s, [sh for sh in shards if sh[0] < 2], progress)
    return run


class _Stop(Exception):
    pass


def _stop_after_two(i: int) -> None:
    if i == 1:
        raise _Stop


@pytest.mark.parametrize("first, then", [("inprocess", "ray"), ("ray", "inprocess")])
def test_a_scan_begun_by_one_executor_resumes_on_the_other(model, corpus, reference, ray_cluster, tmp_path,
                                                           first, then):
    """In this process the shards fold into one checkpointed set of states; on Ray each shard's
    states are saved apart. Either's files resume on the other, to the same tables."""
    from neurolens.engine.runtime.scan import ScanSettings, run_scan, shard_ranges
    from neurolens.executors import scan_shards_ray
    from neurolens.probes.corpora import cut, load_corpus
    from neurolens.store import Store

    a = model.adapter
    ex = cut(load_corpus(corpus), a.processor, length=KW["length"])
    store = Store(tmp_path / "out" / "store")
    store.ensure()
    s = ScanSettings(k=KW["k"], batch_size=KW["batch_size"])
    ray = scan_shards_ray(a, ray_cluster)
    if first == "ray":
        with pytest.raises(RuntimeError, match="without shard 2"):
            run_scan(a, ex, store, layers=LAYERS, settings=s, n_shards=4, runner=_first_two(ray))
        want = ["shard-0000.pt", "shard-0001.pt"]
    else:
        with pytest.raises(_Stop):
            run_scan(a, ex, store, layers=LAYERS, settings=s, n_shards=4, on_shard=_stop_after_two)
        want = ["upto-0001.pt"]
    saved = sorted(f.name for f in (store.root / "_scans").rglob("*.pt") if f.name != "edges.pt")
    assert saved == want and not (store.root / "corpus_top").exists()
    got = run_scan(a, ex, store, layers=LAYERS, settings=s, n_shards=4, runner=ray if then == "ray" else None)
    left = shard_ranges(len(ex), 4)[2:]
    assert got["tokens"] == sum(int(ex.lengths[idx].sum()) for idx in left)   # shards 0 and 1 were reused
    assert_equal(tables(tmp_path / "out"), reference)


def test_scan_cli_on_a_ray_cluster_and_its_errors(corpus, reference, ray_cluster, model, tmp_path, capsys):
    from neurolens.cli import main

    base = ["scan", "--model", model.adapter.ref, "--corpus", corpus, "--layers", "1", "2", "--top-k", "8",
            "--length", "16", "--batch-size", "8", "--shards", "4", "--device", "cpu", "--quiet"]
    assert main(base + ["--executor", "ray", "--address", ray_cluster, "--out", str(tmp_path / "cli")]) == 0
    assert_equal(tables(tmp_path / "cli"), reference)
    capsys.readouterr()
    assert main(base + ["--address", ray_cluster, "--out", str(tmp_path / "err")]) == 2
    assert capsys.readouterr().err.strip() == "neurolens: error: --address is for --executor ray"
    # a cluster that does not answer: its own process (this one has joined the session's)
    r = subprocess.run([sys.executable, "-m", "neurolens", *base, "--executor", "ray", "--address",
                        f"127.0.0.1:{free_port()}", "--out", str(tmp_path / "err")],
                       capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "does not answer" in lines[0], r.stderr
    assert not (tmp_path / "err" / "store" / "corpus_top").exists()
