"""Reports: what each page holds, how it degrades, how big it is, and the CLI around it.
(The pages in a real browser: tests/test_browser.py.)"""
from __future__ import annotations

import html as htmlmod
import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_fixtures import XSS_LABEL, XSS_TEXT, ModelSpec, build_store, default_models  # noqa: E402

from neurolens.reports import ReportError, render_compare, render_report, render_set  # noqa: E402
from neurolens.reports.build import _display_tokens  # noqa: E402
from neurolens.reports.html import safe_json  # noqa: E402
from neurolens.reports.sankey import sankey_svg  # noqa: E402
from neurolens.store import Store, connect  # noqa: E402

MB = 1024 * 1024
SPEC_RE = re.compile(r'<script type="application/json" id="([^"]+)-spec">(.*?)</script>', re.S)


@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reports")
    models = default_models(n_neurons=128) + [
        ModelSpec("resnet18", 4, 64, modality="vision", concepts=["stripes"], top_examples=False),
    ]
    build_store(root / "store", models, n_pos=40, n_neg=40, image_dir=root / "images")
    return root / "store"


@pytest.fixture(scope="module")
def report_set(store_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "reports"
    render_set(store_root, out, progress=False)
    return out


def _page(report_set: Path, name: str) -> str:
    return (report_set / name).read_text(encoding="utf-8")


def _specs(page: str) -> dict[str, dict]:
    return {cid: json.loads(body) for cid, body in SPEC_RE.findall(page)}


# -- the report set --------------------------------------------------------------------------
def test_set_writes_every_page(report_set):
    names = sorted(p.name for p in report_set.glob("*.html"))
    for model in ("gpt2", "bert-base-uncased"):
        for concept in ("royalty", "negation", "past_tense", "plural"):
            assert f"{model}__{concept}.html" in names
    assert "resnet18__stripes.html" in names
    assert "index.html" in names
    # comparisons pair models of the same modality only
    assert [n for n in names if n.startswith("compare__")] == ["compare__bert-base-uncased__vs__gpt2.html"]
    index = _page(report_set, "index.html")
    for n in names:
        if n != "index.html":
            assert f'href="{n}"' in index, f"index does not link {n}"


def test_pages_are_self_contained(report_set):
    for p in report_set.glob("*.html"):
        page = p.read_text(encoding="utf-8")
        assert p.stat().st_size < 5 * MB, f"{p.name} is {p.stat().st_size / MB:.1f} MB"
        assert page.count("window.vegaEmbed=") == 1, f"{p.name}: the Vega bundle must be inlined once"
        assert not re.search(r'<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*"(https?:)?//', page), p.name
        assert "<link " not in page
        specs = _specs(page)
        assert specs, f"{p.name} has no charts"
        for cid, spec in specs.items():
            assert f'data-chart="{cid}"' in page
            assert "$schema" not in spec
            assert "url" not in json.dumps(spec.get("data", {}))     # data inline, never fetched


def test_summary_numbers_match_the_store(store_root, report_set):
    con = connect(store_root)
    n_sig, n_scored, n_rep = con.execute(
        "SELECT count(*) FILTER (WHERE significant AND NOT lexical), count(*), "
        "count(*) FILTER (WHERE significant AND NOT lexical AND replicated) FROM scores "
        "WHERE model = 'gpt2' AND concept = 'negation'").fetchall()[0]
    n_found = con.execute(
        "SELECT count(*) FROM scores s JOIN (SELECT DISTINCT layer, neuron FROM ablations WHERE "
        "model = 'gpt2' AND concept = 'negation' AND mode = 'single' AND validated) USING (layer, neuron) "
        "WHERE model = 'gpt2' AND concept = 'negation' AND significant AND NOT lexical AND replicated").fetchall()[0][0]
    n_val = con.execute(
        "SELECT count(DISTINCT (layer, neuron)) FROM ablations WHERE model = 'gpt2' AND "
        "concept = 'negation' AND mode = 'single' AND validated").fetchall()[0][0]
    best = con.execute(
        "SELECT 'L' || layer || '.N' || neuron FROM scores WHERE model = 'gpt2' AND concept = 'negation' "
        "AND significant AND NOT lexical ORDER BY rank LIMIT 1").fetchall()[0][0]
    page = _page(report_set, "gpt2__negation.html")
    text = htmlmod.unescape(re.sub(r"<[^>]+>", "", page.split('<main>')[0]))
    # the headline leads with significant, replicated and validated neurons
    assert 0 < n_found <= n_rep <= n_sig
    assert (f"{n_found} neurons are significant for negation" in text
            and f"of {n_sig} significant on train among {n_scored:,} scored" in text)
    assert f'<div class="v">{n_val}</div><div class="k">validated by ablation' in page
    assert f"The strongest, {best}" in text
    assert f'id="{best}"' in page                         # its passport card
    assert page.count('<article class="card"') == min(8, n_sig)


def test_report_sections(report_set):
    page = _page(report_set, "gpt2__royalty.html")
    for anchor in ("summary", "where", "scatter", "flow", "ablation", "neurons", "run"):
        assert f'id="{anchor}"' in page
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="sankey"' in page
    names = "".join(_specs(page))
    for kind in ("layers", "sweep", "scatter", "ablation", "hist-"):
        assert kind in names, f"no {kind} chart"
    assert 'class="tok"' in page                          # token-level highlighting
    assert "Consistency by group" in page
    assert "Dots are individual random sets" in page       # random sets stored as rows
    # run details from the runs table
    for field in ("probe", "pooling", "device", "timings", "extract 3.2 s"):
        assert field in page


def test_random_band_from_summary_stats(report_set):
    page = _page(report_set, "bert-base-uncased__royalty.html")
    assert "normal band mean ± 2σ" in page
    spec = next(s for cid, s in _specs(page).items() if "ablation" in cid)
    recs = next(iter(spec["datasets"].values()))
    bands = [r for r in recs if r["kind"] == "band"]
    assert bands and all(r["hi"] > r["lo"] for r in bands)
    assert not [r for r in recs if r["kind"] == "random set"]
    # no top_examples stored for this model: pooled-activation examples instead
    assert "highest pooled activation instead" in page


def test_histograms_count_every_train_example(store_root, report_set):
    page = _page(report_set, "gpt2__plural.html")
    hist = [s for cid, s in _specs(page).items() if "hist-" in cid]
    assert hist
    con = connect(store_root)
    n_train = dict(con.execute("SELECT label, count(*) FROM examples WHERE model = 'gpt2' AND "
                               "concept = 'plural' AND split = 'train' GROUP BY label").fetchall())
    for spec in hist:
        bins = spec["datasets"]["bins"]
        for label in (0, 1):
            assert sum(b["n"] for b in bins if b["label"] == label) == n_train[label]
            assert abs(sum(b["share"] for b in bins if b["label"] == label) - 1) < 1e-9
        band = spec["datasets"]["band"]
        assert len(band) == 1 and band[0]["lo"] < band[0]["hi"]


def test_probe_text_is_escaped(report_set):
    page = _page(report_set, "gpt2__royalty.html")
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<script>alert(2)</script>" not in page
    # chart data in <script type="application/json"> cannot close its tag
    for _cid, body in SPEC_RE.findall(page):
        assert "<" not in body
    labels = [r.get("label") for s in _specs(page).values() for d in s.get("datasets", {}).values()
              for r in d if isinstance(r, dict)]
    assert XSS_LABEL in labels                             # round-trips intact as data
    assert XSS_TEXT  # the hostile example is the concept's first


def test_safe_json():
    s = str(safe_json({"a": "</script><!-- & \u2028"}))
    assert "<" not in s and ">" not in s and "&" not in s and "\u2028" not in s
    assert json.loads(s) == {"a": "</script><!-- & \u2028"}


def test_vision_report_shows_thumbnails(report_set):
    page = _page(report_set, "resnet18__stripes.html")
    assert "not spatial maps" in page
    thumbs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert thumbs
    import base64
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(thumbs[0])))
    assert max(img.size) <= 64


def test_compare_page(report_set):
    page = _page(report_set, "compare__bert-base-uncased__vs__gpt2.html")
    spec = next(iter(_specs(page).values()))
    rows = next(iter(spec["datasets"].values()))
    assert {r["model"] for r in rows} == {"gpt2", "bert-base-uncased"}
    assert {r["concept"] for r in rows} == {"royalty", "negation", "past_tense", "plural"}
    for model in ("gpt2", "bert-base-uncased"):
        for concept in ("royalty", "plural"):
            share = [r for r in rows if r["model"] == model and r["concept"] == concept]
            n = sum(r["n_sig"] for r in share)
            assert n > 0
    assert 'href="gpt2__royalty.html"' in page


# -- degrading gracefully -----------------------------------------------------------------------
def test_missing_tables_hide_sections(tmp_path):
    spec = ModelSpec("tiny", 3, 32, concepts=["negation"], top_examples=False, labels=False)
    store = build_store(tmp_path / "store", [spec], n_pos=30, n_neg=30)
    store.drop_partition("ablations", {"model": "tiny", "concept": "negation"})
    path = render_report(tmp_path / "store", "tiny", "negation", tmp_path / "reports")
    page = path.read_text()
    assert "No ablations in the store" in page
    assert "No neuron labels in the store" in page
    assert "index.html" not in page                         # no set index to link to
    assert not [cid for cid in _specs(page) if "ablation" in cid]


def test_no_activations_still_renders(tmp_path):
    spec = ModelSpec("tiny", 2, 16, concepts=["plural"])
    store = build_store(tmp_path / "store", [spec], n_pos=24, n_neg=24)
    for layer in range(2):
        store.drop_partition("activations", {"model": "tiny", "concept": "plural", "layer": layer})
    page = render_report(tmp_path / "store", "tiny", "plural", tmp_path / "r").read_text()
    assert "has no activations for these neurons" in page
    assert 'class="tok"' in page                            # stored top examples still show


def test_big_model_scatter_is_sampled_and_small(tmp_path):
    spec = ModelSpec("big", 12, 3072, concepts=["royalty"], random_rows=True)
    build_store(tmp_path / "store", [spec], n_pos=30, n_neg=30)
    path = render_report(tmp_path / "store", "big", "royalty", tmp_path / "r")
    page = path.read_text()
    assert path.stat().st_size < 5 * MB
    assert "random sample of" in page
    spec = next(s for cid, s in _specs(page).items() if "scatter" in cid)
    points = next(iter(spec["datasets"].values()))
    assert len(points) < 3500
    assert sum(p["status"] != "neither" for p in points) > 0


# -- errors and the CLI ---------------------------------------------------------------------------
def test_errors_are_one_clear_line(tmp_path, store_root):
    with pytest.raises(ReportError, match="no store at"):
        render_report(tmp_path / "nothing", "gpt2", "royalty", tmp_path)
    with pytest.raises(ReportError, match="model 'gpt3' has no scores"):
        render_report(store_root, "gpt3", "royalty", tmp_path)
    with pytest.raises(ReportError, match="concept 'tense' has no scores"):
        render_report(store_root, "gpt2", "tense", tmp_path)
    with pytest.raises(ReportError, match="model 'x' has no scores"):
        render_compare(store_root, "gpt2", "x", tmp_path)
    with pytest.raises(ReportError, match="model 'x'"):
        render_set(store_root, tmp_path, models=["x"], progress=False)
    Store(tmp_path / "empty").ensure()
    with pytest.raises(ReportError, match="no scores yet"):
        render_set(tmp_path / "empty", tmp_path, progress=False)
    assert issubclass(ReportError, ValueError)


def test_cli_report(tmp_path, store_root, capsys, monkeypatch):
    import shutil

    from neurolens.cli import main

    out = tmp_path / "out"
    shutil.copytree(store_root, out / "store")
    assert main(["report", "--model", "gpt2", "--concept", "plural", "--out", str(out)]) == 0
    assert (out / "reports" / "gpt2__plural.html").exists()
    assert capsys.readouterr().out.strip().endswith("gpt2__plural.html")
    monkeypatch.setenv("NEUROLENS_OUT", str(out))
    assert main(["report", "--concept", "royalty"]) == 0
    assert (out / "reports" / "index.html").exists()
    assert (out / "reports" / "compare__bert-base-uncased__vs__gpt2.html").exists()
    assert len(list((out / "reports").glob("*__royalty.html"))) == 2
    capsys.readouterr()
    assert main(["report", "--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert "model 'nope' has no scores" in err and len(err.strip().splitlines()) == 1


# -- pieces -----------------------------------------------------------------------------------------
def test_sankey_layout():
    flows = [("royalty", 3, "social", 5), ("royalty", 4, "social", 2), ("negation", 3, "grammar", 4),
             ("negation", 7, "<b>x</b>", 1)]
    svg = str(sankey_svg(flows, highlight="royalty"))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count('class="sk-node"') == 2 + 3 + 3        # concepts, layers, families
    assert svg.count('class="sk-link"') == 4 + 4             # concept→layer, then per-concept layer→family
    assert "&lt;b&gt;x&lt;/b&gt;" in svg and "<b>" not in svg
    assert str(sankey_svg([])) == ""


def test_token_display():
    toks = _display_tokens(["The", "Ġking", "Ġsaid", "."], [0.1, 2.0, -0.5, 0.0])
    assert "".join(t["sep"] + t["text"] for t in toks) == "The king said."
    assert toks[1]["alpha"] == 1.0 and toks[2]["alpha"] == 0.0
    toks = _display_tokens(["the", "play", "##ing", "field"], [0, 1, 1, 0])
    assert "".join(t["sep"] + t["text"] for t in toks) == "the playing field"


def test_report_stays_small_when_half_the_neurons_are_significant(tmp_path):
    """A real model can make thousands of neurons significant and hundreds of families
    (MiniLM on the built-in probes does): the page still stays under 5 MB."""
    import numpy as np
    import pyarrow as pa

    from neurolens.store import SCHEMAS, read_table

    spec = ModelSpec("wide", 12, 3072, concepts=["royalty"])
    store = build_store(tmp_path / "store", [spec], n_pos=30, n_neg=30)
    parts = {"model": "wide", "concept": "royalty"}
    sc = read_table(store, "scores", parts)
    n = sc.num_rows
    q = np.where(np.arange(n) % 2 == 0, 0.01, 0.5)
    rank = np.full(n, None, dtype=object)
    rank[::2] = np.arange(1, (n + 1) // 2 + 1)
    sc = sc.set_column(sc.schema.get_field_index("q_value"), "q_value", pa.array(q))
    sc = sc.set_column(sc.schema.get_field_index("significant"), "significant", pa.array(q < 0.05))
    sc = sc.set_column(sc.schema.get_field_index("rank"), "rank", pa.array(list(rank), pa.int32()))
    store.write_partition("scores", parts, sc, key="wide", run_id="t")
    sig = np.arange(0, n, 2)
    layer, neuron = np.asarray(sc.column("layer"))[sig], np.asarray(sc.column("neuron"))[sig]
    labels = pa.Table.from_pydict({
        "layer": pa.array(layer, pa.int32()), "neuron": pa.array(neuron, pa.int32()),
        "family": [f"family-{i % 300}" for i in range(sig.size)], "label": ["royalty"] * sig.size,
        "top_tokens": [["king"]] * sig.size, "concepts": [["royalty"]] * sig.size,
        "polysemantic": [False] * sig.size, "explanation_score": [0.5] * sig.size,
        "run_id": ["t"] * sig.size}, schema=SCHEMAS["labels"])
    store.write_partition("labels", {"model": "wide"}, labels, key="wide", run_id="t")
    path = render_report(tmp_path / "store", "wide", "royalty", tmp_path / "r")
    page = path.read_text()
    assert path.stat().st_size < 5 * MB, f"{path.stat().st_size / MB:.1f} MB"
    assert "other families" in page and "best-ranked" in page


def test_lexical_controls_are_not_concepts_of_the_index(tmp_path):
    """A sweep stores each concept's lexical control as `<concept>+control`: the index,
    its heatmap and the sweep's share chart leave it out; asked for by name, it renders."""
    root = tmp_path / "store"
    build_store(root, [ModelSpec("gpt2", 2, 32, concepts=["royalty", "royalty+control"])], n_pos=12, n_neg=12)
    out = tmp_path / "set"
    render_set(root, out, progress=False)
    names = sorted(p.name for p in out.glob("*.html"))
    assert names == ["gpt2__royalty.html", "index.html"], names
    index = _page(out, "index.html")
    assert "+control" not in index
    assert "+control" not in json.dumps(_specs(_page(out, "gpt2__royalty.html")))
    one = render_report(root, "gpt2", "royalty+control", tmp_path / "one")
    assert Path(one).is_file()
