"""The scan stage through the store: ground truth on planted models, kill -9 then rerun gives
identical tables, and every bad input is one line and exit 2 with nothing stored lost."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from neurolens.cli import main
from neurolens.engine.labels.evidence import run_sql
from neurolens.engine.models import registry
from neurolens.engine.runtime.scan import ScanSettings, run_scan
from neurolens.probes.corpora import cut
from neurolens.store import Store
from tests.test_scan import mixed_corpus

ROOT = Path(__file__).resolve().parent.parent
S = ScanSettings(k=8, window=6, samples=2, bins=8, batch_size=8, calibration=8)


def _tables(store: Store, model: str, corpus: str, layers) -> dict:
    out = {}
    for t in ("corpus_top", "neuron_stats"):
        for l in layers:
            d = store.partition_dir(t, {"model": model, "corpus": corpus, "layer": l})
            files = sorted(d.glob("*.parquet"))
            assert len(files) == 1
            out[t, l] = pq.read_table(files[0], partitioning=None)
    return out


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_planted_neurons_peak_on_royalty_words(planted_factory, family, tmp_path):
    from neurolens.engine.planted.text import ROYALTY

    pm = planted_factory(family)
    adapter = registry.load(str(pm.path), device="cpu")
    ex = cut(mixed_corpus(120), adapter.processor, length=16)
    store = Store(tmp_path / "store")
    layers = sorted({l for l, _ in pm.planted} | {l for l, _ in pm.meta.get("decoys", [])})
    run_scan(adapter, ex, store, layers=layers, settings=S)
    prec = run_sql(store, "corpus_precision", model=adapter.name, corpus="mixed", words=list(ROYALTY))
    p = {(r["layer"], r["neuron"]): r["corpus_precision"] for r in prec.to_dicts()}
    assert len(p) == sum(adapter.n_neurons(l) for l in layers)
    for ln in pm.planted:
        assert p[tuple(ln)] == 1.0, ln
    for ln in pm.meta.get("decoys", []):
        assert p[tuple(ln)] < 0.5, ln           # its gate fires on royalty, the product does not
    base = sum(p.values()) / len(p)
    assert base < 0.3                            # random neurons of those layers: far below


KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from neurolens.engine.models import registry
from neurolens.engine.runtime.scan import ScanSettings, run_scan
from neurolens.probes.corpora import cut
from neurolens.store import Store
from tests.test_scan import mixed_corpus
from tests.test_scan_stage import S
a = registry.load({path!r}, device="cpu")
ex = cut(mixed_corpus(120), a.processor, length=16)
def die(i):
    if i == 1:
        os.kill(os.getpid(), signal.SIGKILL)
run_scan(a, ex, Store({store!r}), layers=[1, 2], settings=S, n_shards=4, on_shard=die)
"""


@pytest.mark.slow
def test_kill_9_then_rerun_gives_identical_tables(planted_factory, tmp_path):
    pm = planted_factory("gpt2")
    killed = tmp_path / "killed"
    code = KILLER.format(root=str(ROOT), path=str(pm.path), store=str(killed))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    work = [f.name for f in (killed / "_scans").rglob("*.pt") if f.name != "edges.pt"]
    assert work == ["upto-0001.pt"]            # one checkpoint: shards 0 and 1 merged before the kill
    assert not (killed / "corpus_top").exists()
    adapter = registry.load(str(pm.path), device="cpu")
    ex = cut(mixed_corpus(120), adapter.processor, length=16)
    got = run_scan(adapter, ex, Store(killed), layers=[1, 2], settings=S, n_shards=4)
    assert got["tokens"] < ex.n_tokens         # the saved shards were not scanned again
    run_scan(adapter, ex, Store(tmp_path / "clean"), layers=[1, 2], settings=S, n_shards=4)
    a = _tables(Store(killed), adapter.name, "mixed", [1, 2])
    b = _tables(Store(tmp_path / "clean"), adapter.name, "mixed", [1, 2])
    for key in a:
        assert a[key].equals(b[key]), key
    assert not list((killed / "_scans").rglob("*.pt"))   # work files gone once published
    # a single-shard scan publishes the same tables too (the merge is exact)
    run_scan(adapter, ex, Store(tmp_path / "one"), layers=[1, 2], settings=S, n_shards=1)
    c = _tables(Store(tmp_path / "one"), adapter.name, "mixed", [1, 2])
    for key in a:
        for col in a[key].column_names:
            if col in ("mean", "std"):
                continue                        # float64 moments: merged in another order
            assert a[key].column(col).equals(c[key].column(col)), (key, col)


def _err(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


def test_bad_input_is_one_line_and_keeps_what_is_stored(planted_factory, tmp_path, capsys):
    pm = planted_factory("gpt2")
    out = str(tmp_path / "out")
    good = tmp_path / "good.txt"
    good.write_text("\n".join(mixed_corpus(80).texts))
    base = ["scan", "--model", str(pm.path), "--out", out, "--quiet", "--length", "16", "--top-k", "5",
            "--layers", "1"]
    assert main(base + ["--corpus", str(good)]) == 0
    capsys.readouterr()
    marker = tmp_path / "out" / "store" / "corpus_top" / f"model={pm.path.name}" / "corpus=good" / "layer=1" \
        / "_partition.json"
    before = marker.read_text()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    notext = tmp_path / "notext.jsonl"
    notext.write_text(json.dumps({"body": "the king"}) + "\n")
    import pyarrow as pa

    pq.write_table(pa.table({"body": ["the king"]}), tmp_path / "notext.parquet")
    short = tmp_path / "short.txt"
    short.write_text("the king sat\n")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa not utf-8")
    cases = [
        (base + ["--corpus", str(empty)], "empty"),
        (base + ["--corpus", str(notext)], "'text'"),
        (base + ["--corpus", str(tmp_path / "notext.parquet")], "'text'"),
        (base + ["--corpus", str(short)], "fewer than k"),
        (base + ["--corpus", str(bad)], "UTF-8"),
        (base + ["--corpus", str(tmp_path / "missing.txt")], "not found"),
        (["neuron", "--model", str(pm.path), "L1.N99999", "--out", out], "out of range"),
        (["neuron", "--model", str(pm.path), "L3.N0", "--out", out], "has not been scanned"),
        (["neuron", "--model", str(pm.path), "L1.N0", "--corpus", "other", "--out", out], "no scan"),
        (["neuron", "--model", "gpt2", "L1.N0", "--out", out], "has not been scanned"),
        (["neuron", "--model", str(pm.path), "layer1", "--out", out], "L13.N891"),
    ]
    for argv, words in cases:
        rc, err = _err(capsys, argv)
        assert rc == 2, (argv, err)
        assert len(err.splitlines()) == 1 and words in err, (argv, err)
    assert marker.read_text() == before
    rc, _ = _err(capsys, ["neuron", "--model", str(pm.path), "L1.N31", "--out", out])
    assert rc == 0


def test_range_counts_of_many_concepts_in_one_pass_equal_a_brute_force(planted_factory):
    """The evidence pass counts every concept's range tokens in one forward: each concept's
    counts equal those computed from every materialised activation with its own mask."""
    import numpy as np
    import torch

    from neurolens.engine.labels.corpus import RangeSpec, range_counts_many
    from neurolens.engine.runtime.hooks import on_sites
    from neurolens.engine.runtime.scan import _batch

    pm = planted_factory("gpt2")
    a = registry.load(str(pm.path), device="cpu")
    ex = cut(mixed_corpus(60), a.processor, length=16)
    acts = {1: [], 2: []}
    with torch.inference_mode(), on_sites(a, [1, 2], lambda l, t: acts[l].append(t.float().clone())):
        for s in range(0, len(ex), 8):
            b, _ = _batch(a, ex, np.arange(s, min(s + 8, len(ex))))
            a.forward(b)
    rng = np.random.default_rng(0)
    words = [["king", "queen", "throne"], ["the", "a"], ["farmer"]]
    specs = []
    for w in words:
        picks = {l: rng.choice(a.n_neurons(l), 5, replace=False) for l in (1, 2) if rng.random() < 0.9 or l == 2}
        lo = {l: rng.normal(0, 0.2, len(p)) for l, p in picks.items()}
        specs.append(RangeSpec(picks, lo, {l: v + rng.uniform(0.1, 1.0, len(v)) for l, v in lo.items()},
                               ex.concept_mask(w)))
    max_tokens = int(ex.lengths.sum()) // 2
    got = range_counts_many(a, ex, specs, max_tokens, batch_size=8)
    n_ex = min(len(ex), int(np.searchsorted(np.cumsum(ex.lengths), max_tokens)) + 1)
    for sp, g in zip(specs, got):
        assert set(g) == set(sp.picks)
        for l, p in sp.picks.items():
            n_in = np.zeros(len(p), np.int64)
            n_hit = np.zeros(len(p), np.int64)
            for e in range(n_ex):      # the reference: every excerpt's real tokens, one at a time
                batch = acts[l][e // 8]
                x = batch[e % 8, : ex.lengths[e]].numpy()[:, p]
                inr = (x >= sp.lo[l].astype(np.float32)) & (x <= sp.hi[l].astype(np.float32))
                n_in += inr.sum(0)
                n_hit += (inr & sp.concept[e, : ex.lengths[e], None]).sum(0)
            assert (g[l][0] == n_in).all() and (g[l][1] == n_hit).all(), (l, g[l], n_in, n_hit)
    assert sum(int(g[2][1].sum()) for g in got) > 0 and sum(int(g[2][0].sum()) for g in got) > 0


def test_the_rate_of_a_rerun_counts_only_the_tokens_it_streamed(planted_factory, tmp_path):
    """A scan whose shards are all saved streams nothing: its rate is not the corpus over the
    seconds it took to read them back."""
    import math

    from neurolens.scans import ScanResult, scan

    a = registry.load(str(planted_factory("gpt2").path), device="cpu")
    corpus = tmp_path / "mixed.txt"
    corpus.write_text("\n".join(mixed_corpus(60).texts))
    first = scan(a, str(corpus), layers=[1], out=str(tmp_path / "out"), k=4, length=16, progress=False)
    assert first.forwarded == first.tokens > 0 and first.tokens_per_s > 0
    again = scan(a, str(corpus), layers=[1], out=str(tmp_path / "out"), k=4, length=16, progress=False)
    assert again.scanned == [] and again.forwarded == 0 and math.isnan(again.tokens_per_s)
    assert ScanResult("m", "c", [0], 10, 1000, 2.0, forwarded=300).tokens_per_s == 150.0


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_logit_effects_equal_a_float64_reference(planted_factory, family, tmp_path):
    """Each neuron's boosted and suppressed tokens: readout column x final norm scale x
    unembedding, recomputed in float64 (ids, order, effects and token names)."""
    import numpy as np
    import pyarrow.compute as pc

    from neurolens.engine.models.logit_effects import _final_scale, readout_rows
    from neurolens.scans import write_logit_effects
    from neurolens.store import read_table

    a = registry.load(str(planted_factory(family).path), device="cpu")
    store = Store(tmp_path / "store")
    store.ensure()
    k = 4
    assert write_logit_effects(a, store, [0, 1], k=k)
    t = read_table(store, "logit_effects", {"model": a.name})
    wu = a.model.get_output_embeddings().weight.detach().double()
    for l in (0, 1):
        eff = (readout_rows(a, l).double() * _final_scale(a).double()) @ wu.t()           # [N, V]
        rows = t.filter(pc.equal(t["layer"], l))
        n = eff.shape[0]
        order = np.lexsort((rows["rank"].to_numpy(), rows["neuron"].to_numpy()))
        ids = rows["token_id"].to_numpy()[order].reshape(n, 2 * k)
        got = rows["effect"].to_numpy()[order].reshape(n, 2 * k)
        top, bot = eff.topk(k, dim=1), eff.topk(k, dim=1, largest=False)
        # ranks -k..-1 sort first: the bottom list, most suppressed (rank -1) last
        assert np.array_equal(ids[:, k:], top.indices.numpy())
        assert np.array_equal(ids[:, :k][:, ::-1], bot.indices.numpy())
        np.testing.assert_allclose(got[:, k:], top.values.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[:, :k][:, ::-1], bot.values.numpy(), rtol=1e-5, atol=1e-6)
        names = rows["token"].to_numpy(zero_copy_only=False)[order].reshape(n, 2 * k)
        assert names[0, k] == a.processor.decode([int(ids[0, k])])

