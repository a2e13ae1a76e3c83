"""The Python API: a model loaded once finds several concepts; results are polars frames; probes
come from lists with the checks of a probe file; a bf16 model's activations are bf16 runs."""
from __future__ import annotations

import random

import polars as pl
import pytest

import neurolens as nl
from neurolens.store import Store as _Store

pytestmark = pytest.mark.xdist_group("api")


def _words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pool = ["table", "river", "green", "music", "paper", "stone", "cloud", "bread", "glass", "light"]
    return [" ".join(rng.choice(pool) for _ in range(5)) + f" {i}" for i in range(n)]


@pytest.fixture(scope="module")
def planted(planted_factory):
    return planted_factory("gpt2")


@pytest.fixture(scope="module")
def found(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "out"
    m = nl.load(planted.path, device="cpu")
    f = m.find(planted.probes, layers=planted.planted_layers, out=out, importance=False, report=False,
               progress=False)
    return m, f, out


def test_find_returns_the_planted_neurons_as_polars(planted, found):
    m, f, out = found
    assert isinstance(m, nl.Model) and isinstance(f, nl.Finding)
    top = f.top(len(planted.planted))
    assert isinstance(top, pl.DataFrame)
    assert {"layer", "neuron", "rank", "score", "selectivity", "q_value"} <= set(top.columns)
    assert top["rank"].to_list() == sorted(top["rank"].to_list())
    assert (top["q_value"] < 0.05).all()
    got = set(zip(top["layer"].to_list(), top["neuron"].to_list()))
    assert got & set(planted.planted), (got, planted.planted)
    assert planted.surface not in got          # the decoy is not among the best
    assert f.scores.height == len(planted.planted_layers) * 256
    assert f.ablations.height == 0             # not asked for
    assert f.report_path is None
    html = f._repr_html_()
    assert planted.probes.concept in html and "significant" in html


def test_the_model_is_reused_and_a_null_probe_finds_nothing(planted, found):
    m, f, out = found
    texts = _words(48, 0)
    null = nl.Probes(positive=texts[:24], negative=texts[24:], concept="null")   # a coin-flip label
    g = m.find(null, layers=planted.planted_layers, out=out, importance=False, report=False,
               progress=False)
    assert g.concept == "null" and g.model == f.model
    assert g.top(10).height == 0
    assert g.scores["q_value"].min() > 0.05
    runs = nl.Store(out).sql("select concept, dtype from runs where status = 'done' order by concept")
    assert isinstance(runs, pl.DataFrame)
    assert runs["concept"].to_list() == ["null", planted.probes.concept]


def test_store_sql_and_named_queries(found):
    _, f, out = found
    n = nl.Store(out).sql("select count(*) as n from scores where model = $m and concept = $c",
                          m=f.model, c=f.concept)["n"][0]
    assert n == f.scores.height
    # one row per run of the whole store, whichever other tests of this module ran first
    runs = nl.Store(out).sql("select count(*) as n from runs")["n"][0]
    assert runs >= 1 and nl.Store(out).query("run_summary").height == runs
    with pytest.raises(nl.QueryError):
        nl.Store(out).sql("select nope from scores")


def test_probes_from_lists_with_groups_and_targets():
    pos = [{"text": f"the king {i} spoke", "group": f"g{i % 4}", "target": " crown"} for i in range(16)]
    neg = [{"text": f"the man {i} spoke", "group": f"g{i % 4}", "target": " crown"} for i in range(16)]
    p = nl.Probes(positive=pos, negative=neg, concept="royalty-mine")
    assert p.concept == "royalty-mine" and p.n_pos == p.n_neg == 16
    assert {e.group for e in p.examples} == {"g0", "g1", "g2", "g3"}
    assert all(e.target == "crown" for e in p.examples)   # stripped, as in a probe file
    test_groups = {e.group for e in p.split("test")}
    assert test_groups and not test_groups & {e.group for e in p.split("train")}   # group-wise split


@pytest.mark.parametrize("pos, neg, match", [
    (["a king"] * 2, ["a man"] * 2, "at least"),                                 # too few
    ([f"k{i}" for i in range(12)] + ["k0"], [f"m{i}" for i in range(12)], "appears twice"),
    ([{"text": f"k{i}", "colour": 1} for i in range(12)], [f"m{i}" for i in range(12)], "colour"),
    ([1] * 12, [f"m{i}" for i in range(12)], "text"),
    ("a king", [f"m{i}" for i in range(12)], "lists"),
])
def test_probes_are_validated_like_probe_files(pos, neg, match):
    with pytest.raises(nl.ProbeError, match=match) as e:
        nl.Probes(positive=pos, negative=neg, concept="x")
    assert isinstance(e.value, nl.NeuroLensError) and "\n" not in str(e.value)


def test_settings_out_of_range_are_config_errors(found):
    m, _, out = found
    with pytest.raises(nl.ConfigError, match="top_k"):
        m.find("royalty", top_k=0, out=out)
    with pytest.raises(nl.ConfigError, match="batch_size"):
        m.find("royalty", batch_size=0, out=out)
    with pytest.raises(nl.ProbeError, match="unknown concept"):
        m.find("no-such-concept", out=out)


def test_every_user_error_is_a_neurolens_error():
    from neurolens.engine.models.adapters.base import ModelError
    from neurolens.probes import ProbeError
    from neurolens.queries import QueryError
    from neurolens.reports import ReportError
    from neurolens.store import StoreError

    for cls in (ModelError, ProbeError, QueryError, ReportError, StoreError, nl.ConfigError):
        assert issubclass(cls, nl.NeuroLensError)
    assert ModelError is nl.ModelError and StoreError is nl.StoreError
    with pytest.raises(nl.ModelError):
        nl.load("no-such-model")


def test_a_bf16_model_stores_bf16_runs(planted, tmp_path):
    """A bf16 adapter passed with the default config (dtype float32) keys, stores and records its
    activations as bfloat16; a float32 run of the same model is not served the bf16 ones."""
    from neurolens.engine.models import registry
    from neurolens.pipeline import RunConfig, run

    out = tmp_path / "out"
    layers = planted.planted_layers[:1]
    adapter = registry.load(str(planted.path), device="cpu", dtype="bfloat16")
    cfg = RunConfig(model=str(planted.path), layers=layers, importance=False, report=False, out=str(out))
    assert cfg.dtype == "float32"
    res = run(cfg, adapter=adapter, probes=planted.probes)
    store = _Store(out / "store")
    marker = store.marker("activations", {"model": res.model, "concept": res.concept, "layer": layers[0]})
    assert marker["key"].split(":")[5] == "bfloat16"      # the key: ...:pooling:dtype:kernels
    runs = nl.Store(out).sql("select dtype from runs where run_id = $r", r=res.run_id)
    assert runs["dtype"].to_list() == ["bfloat16"]
    again = run(cfg, adapter=registry.load(str(planted.path), device="cpu"), probes=planted.probes)
    assert "extract" not in again.skipped        # float32 is extracted anew, not reused from bf16
    marker = store.marker("activations", {"model": res.model, "concept": res.concept, "layer": layers[0]})
    assert marker["key"].split(":")[5] == "float32"


def test_progress_bars_show_in_jupyter(monkeypatch):
    """In a Jupyter kernel stderr is not a terminal, yet the bars are on (rich draws them as a
    widget there); piped output stays silent."""
    from rich.console import Console

    import neurolens.progress as progress

    monkeypatch.setattr(progress, "Console", lambda **kw: Console(**kw, force_jupyter=True))
    assert progress.Bars().enabled
    assert not progress.Bars(enabled=False).enabled
    monkeypatch.setattr(progress, "Console", lambda **kw: Console(**kw, force_jupyter=False))
    assert not progress.Bars().enabled          # pytest captures stderr: not a tty


def test_find_by_name_loads_the_model(planted, tmp_path):
    f = nl.find(str(planted.path), planted.probes, layers=planted.planted_layers[:1], importance=False,
                report=False, out=tmp_path / "out", progress=False)
    assert f.model == planted.path.name or f.model.startswith("planted")
    assert f.top(3).height > 0
