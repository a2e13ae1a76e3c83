"""The query layer: every named query checked against polars on the same Arrow data,
parameter handling, views.sql for a bare duckdb shell, and the `query` command."""
from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from conftest_queries import CONCEPTS, MODELS, build
from polars.testing import assert_frame_equal

from neurolens import queries
from neurolens.commands import query as query_cmd
from neurolens.queries import QueryError
from neurolens.store.duck import tables_in, views_sql, write_views
from neurolens.store.layout import Store

ALPHA = 0.05


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return build(tmp_path_factory.mktemp("nl") / "store")


def _bin(bins: int = 10) -> pl.Expr:
    return pl.min_horizontal((pl.col("depth") * bins + 1e-9).floor().cast(pl.Int32), pl.lit(bins - 1))


def _same(got: pl.DataFrame, want: pl.DataFrame, **kw) -> None:
    assert set(want.columns) <= set(got.columns), set(want.columns) - set(got.columns)
    assert_frame_equal(got.select(want.columns), want, check_dtypes=False, **kw)


# -- the data really looks like what the queries are for --------------------------------------
def test_fixture_is_realistic(syn):
    s = syn.scores
    assert s.group_by("model").agg(pl.col("n_layers").first()).sort("model")["n_layers"].to_list() == [4, 6]
    sig = s.filter(pl.col("q_value") < ALPHA)
    assert 10 < sig.height < s.height / 5
    assert syn.ablations.filter((pl.col("mode") == "single") & pl.col("validated")).height > 5
    assert queries.sql(syn.root, "SELECT count(*) AS n FROM scores")["n"][0] == s.height


# -- top_neurons ------------------------------------------------------------------------------
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("concept", CONCEPTS)
@pytest.mark.parametrize("k", [None, 5])
def test_top_neurons(syn, model, concept, k):
    params = {} if k is None else {"k": k}
    got = queries.named(syn.root, "top_neurons", model=model, concept=concept, **params)
    want = (syn.scores.filter((pl.col("model") == model) & (pl.col("concept") == concept)
                              & pl.col("rank").is_not_null())
            .sort("rank", "layer", "neuron").head(k or 20))
    assert got.height == want.height == min(k or 20, want.height)
    assert got["rank"].to_list() == list(range(1, got.height + 1))
    _same(got, want.select("model", "concept", "rank", "layer", "neuron", "score", "selectivity",
                           "q_value", "run_id"))


def test_top_neurons_all_significant_when_k_large(syn):
    got = queries.named(syn.root, "top_neurons", model="bert-tiny", concept="royalty", k=10_000)
    n_sig = syn.scores.filter((pl.col("model") == "bert-tiny") & (pl.col("concept") == "royalty")
                              & (pl.col("q_value") < ALPHA)).height
    assert got.height == n_sig
    assert (got["q_value"] < ALPHA).all()


# -- layer_profile / depth_profile -------------------------------------------------------------
def _layer_profile(s: pl.DataFrame, model: str, concept: str | None) -> pl.DataFrame:
    s = s.filter(pl.col("model") == model)
    if concept:
        s = s.filter(pl.col("concept") == concept)
    sig = pl.col("q_value") < ALPHA
    return (s.group_by("model", "concept", "layer")
            .agg(pl.col("depth").first(), _bin().first().alias("depth_bin"),
                 pl.len().alias("n_neurons"), sig.sum().alias("n_significant"),
                 sig.mean().alias("share_significant"), pl.col("rank").count().alias("n_ranked"),
                 pl.col("selectivity").filter(sig).mean().alias("mean_selectivity_significant"))
            .sort("concept", "layer"))


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("concept", [None, "negation"])
def test_layer_profile(syn, model, concept):
    params = {"concept": concept} if concept else {}
    got = queries.named(syn.root, "layer_profile", model=model, **params)
    want = _layer_profile(syn.scores, model, concept)
    n_layers = MODELS[model][0]
    assert got.height == n_layers * (1 if concept else len(CONCEPTS))
    _same(got, want)
    assert got["depth_bin"].max() == 9 and got["depth_bin"].min() == 0


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("bins", [10, 4])
def test_depth_profile(syn, model, bins):
    got = queries.named(syn.root, "depth_profile", model=model, bins=bins)
    sig = pl.col("q_value") < ALPHA
    want = (syn.scores.filter(pl.col("model") == model).with_columns(_bin(bins).alias("depth_bin"))
            .group_by("model", "concept", "depth_bin")
            .agg(pl.len().alias("n_neurons"), sig.sum().alias("n_significant"),
                 sig.mean().alias("share_significant"),
                 pl.col("layer").unique().sort().alias("layers"))
            .sort("concept", "depth_bin"))
    _same(got, want)
    assert ((got["depth_lo"] - got["depth_bin"] / bins).abs() < 1e-12).all()


# -- compare_models / bert_vs_roberta -----------------------------------------------------------
def _compare(s: pl.DataFrame, a: str, b: str, concept: str | None, top: int = 100) -> pl.DataFrame:
    if concept:
        s = s.filter(pl.col("concept") == concept)
    s = s.with_columns(_bin().alias("depth_bin"))
    is_top = pl.col("rank") <= top

    def side(model: str, p: str) -> pl.DataFrame:
        return (s.filter(pl.col("model") == model).group_by("concept", "depth_bin")
                .agg((pl.col("q_value") < ALPHA).mean().alias(f"{p}_share_significant"),
                     is_top.sum().alias(f"{p}_n_top"),
                     pl.col("selectivity").filter(is_top).mean().alias(f"{p}_mean_selectivity_top"),
                     pl.col("layer").unique().sort().alias(f"{p}_layers")))

    return (side(a, "a").join(side(b, "b"), on=["concept", "depth_bin"], how="full", coalesce=True)
            .sort("concept", "depth_bin"))


@pytest.mark.parametrize("concept", [None, "royalty"])
@pytest.mark.parametrize("top", [100, 3])
def test_compare_models(syn, concept, top):
    params = {"concept": concept} if concept else {}
    got = queries.named(syn.root, "compare_models", model_a="bert-tiny", model_b="roberta-tiny",
                        top=top, **params)
    want = _compare(syn.scores, "bert-tiny", "roberta-tiny", concept, top)
    _same(got, want)
    # bert-tiny's 4 layers sit at depth 0, 1/3, 2/3, 1; roberta-tiny's 6 at 0, .2, ... 1
    per_concept = got.filter(pl.col("concept") == (concept or "negation"))
    assert per_concept["depth_bin"].to_list() == [0, 2, 3, 4, 6, 8, 9]
    both = per_concept.drop_nulls(["a_share_significant", "b_share_significant"])
    assert both["depth_bin"].to_list() == [0, 6, 9]
    assert (both["share_significant_diff"] - (both["b_share_significant"] - both["a_share_significant"])
            ).abs().max() < 1e-12
    assert (got["model_a"] == "bert-tiny").all() and (got["model_b"] == "roberta-tiny").all()


def test_bert_vs_roberta_is_compare_models_with_defaults(syn):
    q, c = queries.get("bert_vs_roberta"), queries.get("compare_models")
    assert q.body == c.body
    assert q.param("model_a").default == "bert-base-uncased"
    assert q.param("model_b").default == "roberta-base"
    got = queries.named(syn.root, "bert_vs_roberta", model_a="bert-tiny", model_b="roberta-tiny")
    want = queries.named(syn.root, "compare_models", model_a="bert-tiny", model_b="roberta-tiny")
    assert_frame_equal(got, want)
    empty = queries.named(syn.root, "bert_vs_roberta")  # the base models are not in this store
    assert empty.height == 0 and empty.columns == want.columns


# -- concept_overlap ------------------------------------------------------------------------------
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("min_concepts", [2, 3])
def test_concept_overlap(syn, model, min_concepts):
    got = queries.named(syn.root, "concept_overlap", model=model, min_concepts=min_concepts)
    want = (syn.scores.filter((pl.col("model") == model) & (pl.col("q_value") < ALPHA))
            .group_by("model", "layer", "neuron")
            .agg(pl.col("concept").n_unique().alias("n_concepts"),
                 pl.col("concept").unique().sort().alias("concepts"),
                 pl.col("selectivity").mean().alias("mean_selectivity"),
                 pl.col("rank").min().alias("best_rank"))
            .filter(pl.col("n_concepts") >= min_concepts)
            .sort(["n_concepts", "layer", "neuron"], descending=[True, False, False]))
    _same(got, want)
    assert got.filter(pl.col("n_concepts") == 3).height >= 6  # the planted shared neurons


# -- validated ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model,concept", [(None, None), ("bert-tiny", None), ("roberta-tiny", "royalty"),
                                           ("bert-tiny", "negation")])
def test_validated(syn, model, concept):
    params = {k: v for k, v in dict(model=model, concept=concept).items() if v is not None}
    got = queries.named(syn.root, "validated", **params)
    a = (syn.ablations.filter((pl.col("mode") == "single") & pl.col("validated"))
         .rename({"q_value": "ablation_q"}))
    if model:
        a = a.filter(pl.col("model") == model)
    if concept:
        a = a.filter(pl.col("concept") == concept)
    want = (a.join(syn.scores.select("model", "concept", "layer", "neuron", "rank", "score", "q_value"),
                   on=["model", "concept", "layer", "neuron"], how="left")
            .sort(["model", "concept", "drop", "layer", "neuron", "method"],
                  descending=[False, False, True, False, False, False]))
    assert got.height == want.height > 0
    _same(got, want.select("model", "concept", "method", "layer", "neuron", "rank", "score", "q_value",
                           "drop", "z", "ablation_q"))
    assert got["drop"].is_nan().sum() == 0 and got["specificity"].is_nan().sum() == 0
    assert (got["ablation_q"] < ALPHA).all()
    assert got["rank"].null_count() == 0  # ablated neurons are ranked ones


# -- run_summary ----------------------------------------------------------------------------------
def test_run_summary(syn):
    got = queries.named(syn.root, "run_summary")
    s = syn.scores.group_by("run_id").agg(pl.len().alias("n_scored"),
                                          (pl.col("q_value") < ALPHA).sum().alias("n_significant"),
                                          pl.col("rank").count().alias("n_ranked"))
    a = syn.ablations.group_by("run_id").agg(
        pl.len().alias("n_ablations"),
        pl.struct("layer", "neuron").filter((pl.col("mode") == "single") & pl.col("validated"))
        .n_unique().alias("n_validated"))
    want = (syn.runs.join(s, on="run_id", how="left").join(a, on="run_id", how="left")
            .with_columns(pl.col("n_scored", "n_significant", "n_ranked", "n_ablations", "n_validated")
                          .fill_null(0),
                          pl.sum_horizontal("seconds_extract", "seconds_score", "seconds_ablate")
                          .alias("seconds_total"))
            .sort(["started_at", "run_id"], descending=[True, False], nulls_last=True))
    assert got.height == syn.runs.height == 7
    _same(got, want.select("run_id", "model", "concept", "status", "n_scored", "n_significant",
                           "n_ranked", "n_ablations", "n_validated", "seconds_extract",
                           "seconds_ablate", "seconds_total"))
    assert got["started_at"].dt.epoch("us").to_list() == want["started_at"].dt.epoch("us").to_list()
    failed = got.filter(pl.col("status") == "failed")
    assert failed["n_scored"].to_list() == [0] and failed["run_id"].to_list() == ["r99-failed"]


# -- concept_summary ------------------------------------------------------------------------------
def test_concept_summary(syn, tmp_path):
    """Counts per model x concept against polars; a lexical control is a column of its concept
    (neurons significant on it), never a row; the top set's row is the largest cumulative k."""
    import shutil

    root = Path(shutil.copytree(syn.root, tmp_path / "store"))
    ctrl = syn.scores.filter((pl.col("model") == "bert-tiny") & (pl.col("concept") == "negation"))
    flags = np.zeros(ctrl.height, bool)
    flags[:7] = True
    ctrl = ctrl.with_columns(significant=pl.Series(flags), run_id=pl.lit("rc"))
    table = ctrl.drop("model", "concept").to_arrow()
    from neurolens.store.schema import SCORES
    Store(root).write_partition("scores", {"model": "bert-tiny", "concept": "negation+control"},
                                table.select(SCORES.names).cast(SCORES), key="rc", run_id="rc")
    got = queries.named(root, "concept_summary", method="zero")
    s = (syn.scores.group_by("model", "concept")
         .agg((pl.col("significant") & ~pl.col("lexical")).sum().alias("n_significant"),
              pl.col("opposite").sum().alias("n_opposite"),
              (pl.col("significant") & pl.col("lexical")).sum().alias("n_lexical"),
              pl.col("replicated").sum().alias("n_replicated")))
    a = syn.ablations.filter(pl.col("method") == "zero")
    single = (a.filter(pl.col("mode") == "single").group_by("model", "concept")
              .agg(pl.struct("layer", "neuron").n_unique().alias("n_ablated"),
                   pl.struct("layer", "neuron").filter(pl.col("validated").fill_null(False))
                   .n_unique().alias("n_validated")))
    top = (a.filter(pl.col("mode") == "cumulative").sort("k", descending=True)
           .group_by("model", "concept").first()
           .select("model", "concept", pl.col("k").alias("top_k"), pl.col("drop").alias("top_drop"),
                   pl.col("p_value").alias("top_p")))
    want = (s.join(single, on=["model", "concept"], how="left").join(top, on=["model", "concept"], how="left")
            .with_columns(n_control=pl.when((pl.col("model") == "bert-tiny") & (pl.col("concept") == "negation"))
                          .then(7).otherwise(0))
            .sort("model", "concept"))
    assert got.height == want.height == len(MODELS) * len(CONCEPTS)
    assert not got["concept"].str.ends_with("+control").any()
    _same(got, want.select("model", "concept", "n_significant", "n_opposite", "n_control", "n_lexical",
                           "n_replicated", "n_ablated", "n_validated", "top_k", "top_drop", "top_p"))
    assert got["n_validated"].sum() > 0 and got["n_significant"].min() > 0
    assert queries.named(root, "concept_summary", model="bert-tiny").height == len(CONCEPTS)


# -- corpus_precision ------------------------------------------------------------------------------
def test_corpus_precision(tmp_path):
    """The top-`top` ranked neurons' corpus precision per model x concept x corpus, against polars
    on random rows; lexical controls are left out; `top` cuts by rank, not by row order."""
    from neurolens.store.schema import CORPUS_EVIDENCE

    rng = np.random.default_rng(3)
    store = Store(tmp_path / "store")
    frames = []
    for model in ("bert-tiny", "llama-tiny"):
        for concept in ("royalty", "negation", "royalty+control"):
            n = 12
            df = pl.DataFrame({
                "layer": rng.integers(0, 4, n).astype(np.int32), "neuron": rng.permutation(500)[:n].astype(np.int32),
                "rank": (rng.permutation(n) + 1).astype(np.int32), "corpus_precision": rng.random(n),
                "base_precision": rng.random(n) * 0.3, "range_precision": rng.random(n),
                "range_tokens": rng.integers(0, 1000, n), "n_categories": rng.integers(1, 9, n).astype(np.int32),
                "categories": [["noun.person"]] * n, "run_id": ["r"] * n})
            store.write_partition("corpus_evidence", {"model": model, "concept": concept, "corpus": "wordnet"},
                                  df.to_arrow().cast(CORPUS_EVIDENCE), key="k", run_id="r")
            frames.append(df.with_columns(model=pl.lit(model), concept=pl.lit(concept)))
    ev = pl.concat(frames).filter(~pl.col("concept").str.ends_with("+control"))
    for top in (5, 1):
        got = queries.named(store.root, "corpus_precision", top=top)
        want = (ev.filter(pl.col("rank") <= top).sort("rank").group_by("model", "concept", maintain_order=True)
                .agg(pl.col("corpus_precision").mean().alias("mean_precision"),
                     pl.col("base_precision").mean().alias("mean_base_precision"),
                     (pl.col("corpus_precision") > pl.col("base_precision")).sum().alias("n_above_base"),
                     pl.format("L{}.N{}", "layer", "neuron").alias("neurons"))
                .sort("model", "concept"))
        assert got["n_neurons"].to_list() == [top] * 4
        _same(got, want)
    assert queries.named(store.root, "corpus_precision", model="bert-tiny", corpus="none").height == 0


# -- the runner: headers, parameters, errors ----------------------------------------------------
def test_every_named_query_is_declared():
    names = queries.query_names()
    for n in ("top_neurons", "layer_profile", "depth_profile", "compare_models", "bert_vs_roberta",
              "concept_overlap", "validated", "run_summary", "concept_summary", "corpus_precision"):
        assert n in names
    for q in queries.list_queries():
        assert q.description, q.name
        for p in q.params:
            assert f"${p.name}" in q.body


def test_header_parsing():
    q = queries.parse("-- description: d\n-- param: m VARCHAR\n-- param: k INTEGER = 7\n"
                      "-- param: c VARCHAR = NULL\n-- param: x DOUBLE = 0.5\n-- param: s VARCHAR = 'a b'\n"
                      "SELECT $m, $k, $c, $x, $s;\n", "t")
    assert q.description == "d" and q.body == "SELECT $m, $k, $c, $x, $s"
    assert [(p.name, p.type, p.required) for p in q.params] == [
        ("m", "VARCHAR", True), ("k", "INTEGER", False), ("c", "VARCHAR", False),
        ("x", "DOUBLE", False), ("s", "VARCHAR", False)]
    assert queries.bind(q, {"m": "gpt2"}) == {"m": "gpt2", "k": 7, "c": None, "x": 0.5, "s": "a b"}
    assert queries.bind(q, {"m": "g", "k": "12", "x": "1e-3"}) == {"m": "g", "k": 12, "c": None,
                                                                   "x": 0.001, "s": "a b"}
    with pytest.raises(QueryError, match="undeclared"):
        queries.parse("-- param: a INTEGER\nSELECT $a, $b", "t")
    with pytest.raises(QueryError, match="unused"):
        queries.parse("-- param: a INTEGER\nSELECT 1", "t")
    with pytest.raises(QueryError, match="unsupported type"):
        queries.parse("-- param: a BLOB\nSELECT $a", "t")


@pytest.mark.parametrize("call,match", [
    (lambda r: queries.named(r, "no_such_query"), "unknown query 'no_such_query'"),
    (lambda r: queries.named(r, "../top_neurons"), "unknown query"),
    (lambda r: queries.named(r, "top_neurons", model="bert-tiny"), "needs parameter concept"),
    (lambda r: queries.named(r, "top_neurons", model="m", concept="c", kk=3), "no parameter 'kk'"),
    (lambda r: queries.named(r, "top_neurons", model="m", concept="c", k="ten"), "not a valid INTEGER"),
    (lambda r: queries.named(r, "top_neurons", model="m", concept="c", k=True), "not a valid INTEGER"),
    (lambda r: queries.sql(r, "SELEC 1"), "SQL failed: Parser Error"),
    (lambda r: queries.sql(r, "SELECT nope FROM scores"), "SQL failed"),
    (lambda r: queries.sql(r, "   "), "empty SQL"),
    (lambda r: queries.sql(r / "missing", "SELECT 1"), "no store at"),
])
def test_errors_are_one_line(syn, call, match):
    with pytest.raises(QueryError, match=match) as e:
        call(syn.root)
    assert isinstance(e.value, ValueError)
    assert "\n" not in str(e.value)


def test_parameters_are_bound_not_pasted(syn):
    evil = "bert-tiny' OR '1'='1"
    assert queries.named(syn.root, "top_neurons", model=evil, concept="negation").height == 0
    got = queries.sql(syn.root, "SELECT count(*) AS n FROM scores WHERE model = $m", {"m": "bert-tiny"})
    assert got["n"][0] == syn.scores.filter(pl.col("model") == "bert-tiny").height


def test_views_over_empty_tables(syn, tmp_path):
    assert queries.sql(syn.root, "SELECT count(*) AS n FROM activations")["n"][0] == 0
    assert queries.sql(syn.root, "SELECT count(*) AS n FROM labels")["n"][0] == 2
    fresh = tmp_path / "store"
    fresh.mkdir()
    for q in queries.list_queries():
        params = {p.name: ("x" if p.type == "VARCHAR" else 1) for p in q.params if p.required}
        assert queries.named(fresh, q.name, **params).height == 0


# -- views.sql for a bare duckdb shell ----------------------------------------------------------
def test_views_sql_is_written_and_runs_in_a_fresh_connection(syn):
    path = Path(syn.root) / "views.sql"
    path.unlink(missing_ok=True)
    queries.sql(syn.root, "SELECT 1")
    assert path.read_text() == views_sql(Store(syn.root))
    con = duckdb.connect()  # what `duckdb -init <store>/views.sql` does
    con.execute(path.read_text())
    tables = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert tables == {"runs", "examples", "activations", "scores", "ablations", "labels", "top_examples",
                      "corpus_top", "neuron_stats", "logit_effects", "corpus_evidence"}
    n = con.execute("SELECT count(*) FROM scores WHERE model = 'roberta-tiny' AND q_value < 0.05").fetchone()[0]
    assert n == syn.scores.filter((pl.col("model") == "roberta-tiny") & (pl.col("q_value") < ALPHA)).height
    # a named query's SQL runs there too, with the parameters set as variables
    body = queries.get("top_neurons").body
    top = con.execute(body, {"model": "bert-tiny", "concept": "negation", "k": 3}).fetchall()
    assert [r[2] for r in top] == [1, 2, 3]
    con.close()


def test_tables_in_names_every_table_a_statement_may_read():
    assert tables_in("SELECT * FROM scores s JOIN Labels USING (model)") == ["scores", "labels"]
    assert tables_in('select count(*) from "runs"') == ["runs"]
    assert tables_in("select 1 as score, 'activation' as x") == []
    # every named query reads only tables it names (else its view would be missing)
    for q in queries.list_queries():
        assert tables_in(q.body), q.name


def test_queries_open_only_the_views_they_read(syn):
    con = queries.open_store(syn.root, for_sql="select count(*) from Scores")
    try:
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        assert views == {"scores"}
    finally:
        con.close()
    assert queries.sql(syn.root, "select count(*) as n from Scores")["n"][0] == syn.scores.height


def test_a_delta_store_answers_every_named_query_as_the_parquet_store(syn, tmp_path):
    """The same store as Delta tables (migrated) gives the same rows for every named query
    with the views limited to what each reads, and its logs are checkpointed every 10 commits."""
    from neurolens.store.migrate import migrate

    dst = tmp_path / "delta" / "store"
    assert migrate(syn.root, str(dst)) > 0
    values = {"model": "bert-tiny", "model_a": "bert-tiny", "model_b": "roberta-tiny", "concept": "negation"}
    for q in queries.list_queries():
        params = {p.name: values[p.name] for p in q.params if p.name in values}
        a, b = queries.named(syn.root, q.name, **params), queries.named(str(dst), q.name, **params)
        assert a.height > 0 or q.name in ("range_vs_whole", "corpus_precision"), q.name   # no scan in syn
        _same(b.sort(b.columns), a.sort(a.columns))


def test_delta_logs_are_checkpointed_every_10_commits(tmp_path):
    """Opening a table reads its last checkpoint and the commits after it: on object storage
    that is one request per commit, so a store of many partitions must not replay them all."""
    from neurolens.store.delta import DeltaStore, table_schema

    store = DeltaStore(tmp_path / "store")
    store.ensure()
    empty = table_schema("labels").empty_table()
    for i in range(12):
        store.write_partition("labels", {"model": f"m{i}"}, empty, key=f"k{i}", run_id=f"r{i}")
    log = tmp_path / "store" / "labels" / "_delta_log"
    assert len(list(log.glob("*.checkpoint.parquet"))) == 1   # at the 10th commit
    assert {p["model"] for p in DeltaStore(tmp_path / "store").partitions("labels")} == {f"m{i}" for i in range(12)}


def test_write_views_skips_missing_store(tmp_path):
    assert write_views(tmp_path / "nope") is None
    assert not (tmp_path / "nope").exists()


# -- the command ----------------------------------------------------------------------------------
def _args(out: Path | None, **kw) -> argparse.Namespace:
    base = dict(sql=None, name=None, param=[], format="table", out=None if out is None else str(out),
                list=False)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.fixture(scope="module")
def out(syn):
    return Path(syn.root).parent  # the store is <out>/store


def _run(args) -> str:
    buf = io.StringIO()
    assert query_cmd.run(args, stdout=buf) == 0
    return buf.getvalue()


def test_cli_parser_wiring(out):
    parser = argparse.ArgumentParser(prog="neurolens")
    query_cmd.add_parser(parser.add_subparsers(dest="command"))
    a = parser.parse_args(["query", "--name", "top_neurons", "--param", "model=bert-tiny",
                           "--param", "concept=negation", "--param", "k=3", "--format", "json",
                           "--out", str(out)])
    assert a.func is query_cmd.run
    data = json.loads(_run(a))
    assert [r["rank"] for r in data] == [1, 2, 3]


def test_cli_json_is_one_array_of_plain_values(out, syn):
    text = _run(_args(out, name="run_summary", format="json"))
    assert text.count("\n") == 1
    data = json.loads(text)
    assert isinstance(data, list) and len(data) == 7 and isinstance(data[0], dict)
    row = next(r for r in data if r["run_id"] == "r00-bert-tiny-negation")
    assert row["started_at"].startswith("2025-03-01T12:00:00")
    failed = next(r for r in data if r["status"] == "failed")
    assert failed["started_at"] is None and failed["seconds_extract"] is None
    text = _run(_args(out, sql="SELECT 'nan'::DOUBLE AS x, [1, 2] AS l, 'infinity'::DOUBLE AS y, "
                               "TIMESTAMP '2025-01-02 03:04:05' AS t, DATE '2025-01-02' AS d", format="json"))
    assert json.loads(text) == [{"x": None, "l": [1, 2], "y": None, "t": "2025-01-02T03:04:05",
                                 "d": "2025-01-02"}]


def test_cli_json_matches_named(out, syn):
    data = json.loads(_run(_args(out, name="concept_overlap", param=["model=roberta-tiny"], format="json")))
    df = queries.named(syn.root, "concept_overlap", model="roberta-tiny")
    assert [r["concepts"] for r in data] == df["concepts"].to_list()
    assert all(math.isclose(r["mean_selectivity"], v) for r, v in zip(data, df["mean_selectivity"]))


def test_cli_csv_and_table(out):
    text = _run(_args(out, name="concept_overlap", param=["model=bert-tiny"], format="csv"))
    back = pl.read_csv(io.StringIO(text))
    assert back.columns[:5] == ["model", "layer", "neuron", "depth", "n_concepts"]
    assert json.loads(back["concepts"][0]) == sorted(CONCEPTS)
    table = _run(_args(out, name="bert_vs_roberta", param=["model_a=bert-tiny", "model_b=roberta-tiny"]))
    assert "a_share_significant" in table and "depth_bin" in table
    assert "negation" in table and "rows" in table


def test_cli_list(out):
    text = _run(_args(out, list=True, format="json"))
    listed = {q["name"]: q for q in json.loads(text)}
    assert set(listed) == set(queries.query_names())
    assert listed["top_neurons"]["params"][2] == {"name": "k", "type": "INTEGER", "required": False,
                                                  "default": 20}
    assert "top_neurons" in _run(_args(out, list=True))


def test_cli_out_from_env(out, monkeypatch):
    monkeypatch.setenv("NEUROLENS_OUT", str(out))
    data = json.loads(_run(_args(None, sql="SELECT count(*) AS n FROM runs", format="json")))
    assert data == [{"n": 7}]


@pytest.mark.parametrize("kw,match", [
    (dict(), "give SQL to run"),
    (dict(sql="SELECT 1", name="run_summary"), "not both"),
    (dict(sql="SELECT 1", param=["k=1"]), "--param goes with --name"),
    (dict(name="top_neurons", param=["k"]), "NAME=VALUE"),
    (dict(name="top_neurons", param=["model=a", "concept=b", "model=c"]), "given twice"),
    (dict(name="top_neurons", param=["model=a"]), "needs parameter concept"),
    (dict(name="nope"), "unknown query"),
    (dict(sql="SELECT * FROM nowhere"), "SQL failed"),
])
def test_cli_errors(out, kw, match):
    with pytest.raises(QueryError, match=match):
        query_cmd.run(_args(out, **kw), stdout=io.StringIO())


def test_cli_missing_store(tmp_path):
    with pytest.raises(QueryError, match="no store at"):
        query_cmd.run(_args(tmp_path / "empty", sql="SELECT 1"), stdout=io.StringIO())


@pytest.mark.parametrize("name", ["concept_overlap", "validated", "run_summary"])
def test_whole_store_queries_need_no_parameters(out, syn, name):
    """With no model or concept given, these run over every model of the store; with one, they
    return exactly that model's share of the rows."""
    data = json.loads(_run(_args(out, name=name, format="json")))
    whole = queries.named(syn.root, name)
    assert len(data) == whole.height > 0
    models = set(whole["model"].to_list())
    assert len(models) >= 2, models
    for m in models:
        assert queries.named(syn.root, name, model=m).height == whole.filter(pl.col("model") == m).height


def test_alpha_defaults_come_from_one_constant():
    from neurolens.constants import ALPHA as ONE

    for q in queries.list_queries():
        p = q.param("alpha")
        if p is not None:
            assert p.default == ONE == ALPHA, q.name
    assert not [n for n in queries.query_names() if n.startswith("label_")]   # the engine's own SQL


@pytest.mark.parametrize("k", [1, 7, 10_000])
def test_top_neurons_is_one_rule(syn, k):
    """The named query, the report's query and store.top (used by pipeline, ablation and labels)
    pick the same neurons in the same order."""
    from neurolens.reports.data import connect as report_connect
    from neurolens.reports.data import query as report_query
    from neurolens.store.top import top_neurons

    for model in ("bert-tiny", "roberta-tiny"):
        want = top_neurons(Store(syn.root), model, "royalty", k, columns=("layer", "neuron")).to_pylist()
        named = queries.named(syn.root, "top_neurons", model=model, concept="royalty", k=k)
        assert [(r["layer"], r["neuron"]) for r in want] == list(zip(named["layer"], named["neuron"]))
        con = report_connect(syn.root)
        rep = report_query(con, "top_neurons", model=model, concept="royalty", k=k)
        assert [(r["layer"], r["neuron"]) for r in want] == list(zip(rep["layer"], rep["neuron"]))


# -- range_vs_whole -------------------------------------------------------------------------------
def test_range_vs_whole(syn):
    got = queries.named(syn.root, "range_vs_whole")
    a = syn.ablations
    cells = (a.filter((pl.col("mode") == "single") & pl.col("validated"))
             .select("model", "concept").unique())
    full = (a.filter(pl.col("mode") == "cumulative")
            .filter(pl.col("k") == pl.col("k").max().over("model", "concept", "method")))
    want = (cells.join(full.filter(pl.col("method") == "zero")
                       .select("model", "concept", "k", zero_drop="drop", zero_off_target="off_target_drop"),
                       on=["model", "concept"], how="left")
            .sort("model", "concept"))
    assert got.height == want.height > 0
    _same(got, want)
    assert got["mean_drop"].null_count() == got.height      # the fixture's curve is zero-only
    assert set(got["metric"].to_list()) == {"readout_prob"}


class _Recording(pafs.FileSystemHandler):
    """The local file system, recording every byte range read: (path, offset, length)."""

    def __init__(self, reads: list):
        self.fs, self.reads = pafs.LocalFileSystem(), reads

    def get_type_name(self):
        return "recording"

    def __eq__(self, other):
        return isinstance(other, _Recording)

    def __ne__(self, other):
        return not self == other

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def open_input_file(self, path):
        raw, reads = self.fs.open_input_file(path), self.reads

        class _File(io.RawIOBase):
            def readable(self):
                return True

            def seekable(self):
                return True

            def seek(self, offset, whence=0):
                return raw.seek(offset, whence)

            def tell(self):
                return raw.tell()

            def readinto(self, buf):
                at = raw.tell()
                data = raw.read(len(buf))
                reads.append((path, at, len(data)))
                buf[:len(data)] = data
                return len(data)

        return pa.PythonFile(_File(), mode="r")

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def create_dir(self, *a): raise NotImplementedError
    delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = create_dir
    move = copy_file = open_output_stream = open_append_stream = create_dir


def test_a_delta_store_reads_each_file_footer_once_per_process(syn, tmp_path):
    """A Delta data file is never rewritten, so its Parquet footer is read by the first query
    only: later queries in the process read the column chunks alone (on object storage, one
    request fewer per file per query)."""
    from neurolens.store.delta import DeltaStore
    from neurolens.store.migrate import migrate

    dst = tmp_path / "delta"
    migrate(syn.root, str(dst))
    reads: list = []
    store = DeltaStore(dst)
    store._fs = pafs.PyFileSystem(_Recording(reads))
    sizes = {Path(f["path"]).name: f["size"] for f in store._files("scores")}
    assert len(sizes) > 1

    def count_and_footers():
        reads.clear()
        con = duckdb.connect()
        con.register("scores", store.dataset("scores"))
        n = con.execute("select count(*), min(selectivity), max(selectivity) from scores").fetchone()
        ends = {Path(p).name for p, at, k in reads if at + k >= sizes[Path(p).name]}
        return n, ends

    first, ends = count_and_footers()
    assert first[0] == syn.scores.height
    assert ends == set(sizes)                               # every footer read once
    again, ends = count_and_footers()
    assert again == first and ends == set()                 # and never again


def test_a_partition_replaced_while_it_is_read_is_read_again(syn, monkeypatch):
    """A reader that lists a partition's files just before a concurrent writer replaces the
    partition finds them gone: it reads again and sees the new files, never an error.
    The race is forced by making the first read list a file that is not there."""
    from neurolens.store import duck

    real, calls = duck.view_sql, []

    def racing(store, table):
        calls.append(table)
        if len(calls) == 1:   # the old file list of a partition replaced since
            gone = (Path(store.root) / table / "replaced.parquet").as_posix()
            return f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet(['{gone}']);"
        return real(store, table)

    monkeypatch.setattr(duck, "view_sql", racing)
    got = queries.sql(syn.root, "select count(*) as n from scores")
    assert calls[:2] == ["scores", "scores"] and got["n"][0] > 0
    # an error that is not a vanished file is not retried
    assert not duck.vanished(duckdb.InvalidInputException("No files found"))
    assert not duck.vanished(duckdb.IOException("Invalid Parquet file: bad magic"))
