"""`neurolens run` and `neurolens sweep` end to end on local checkpoints, and quiet progress."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from neurolens.cli import main

pytestmark = pytest.mark.xdist_group("cli")


def _dedup(src: Path, dst: Path) -> Path:
    d = json.loads(src.read_text())
    for side in ("positive", "negative"):  # the loader rejects repeated examples
        seen: set = set()
        d[side] = [x for x in d[side] if not ((t := x["text"] if isinstance(x, dict) else x) in seen
                                              or seen.add(t))]
    dst.write_text(json.dumps(d))
    return dst


@pytest.mark.slow
def test_run_end_to_end(planted_factory, tmp_path, capsys):
    pm = planted_factory("gpt2")
    probes = _dedup(pm.probe_file, tmp_path / "probes.json")
    out = tmp_path / "out"
    argv = ["run", "--model", str(pm.path), "--probes", str(probes), "--layers", "1", "2",
            "--ablate", "--top-k", "3", "--pooling", "mean", "--device", "cpu", "--batch-size", "16",
            "--seed", "1", "--no-importance", "--ablate-controls", "19", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "top neurons" in text and "report:" in text
    # --ablate: the statistics it computed (random drop, z, p, q, specificity, validated) are printed
    for column in ("validated", "ablation of the top-k set", "against random drop", "off-target drop",
                   "(z ", ", p ", ", q ", "specificity"):
        assert column in text, (column, text)
    report = Path(text.split("report:")[1].split()[0])
    assert report.is_file() and report.suffix == ".html"
    planted = {f"L{l}.N{n}" for l, n in pm.planted}
    assert planted & set(text.split()), text  # a planted neuron is among the top ones
    # the ablation summary says what validated means and which confidence the drops are on
    assert "validated" in text and "drops measured on target_prob" in " ".join(text.split()), text

    from neurolens.store import connect

    con = connect(out / "store")
    assert con.execute("select count(*) from scores").fetchone()[0] == 2 * 256
    assert con.execute("select count(*) from ablations").fetchone()[0] > 0
    # the same command again reuses every stage
    assert main(argv[:-2] + ["--no-report", "--out", str(out)]) == 0
    assert "reused from the store: extract, score, ablate" in capsys.readouterr().out


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """minilm and a second checkpoint folder holding the same weights under another name."""
    from neurolens.engine.models.registry import minilm_dir

    src = minilm_dir()
    copy = tmp_path_factory.mktemp("models") / "minilm-twin"
    copy.mkdir()
    for f in src.iterdir():
        (copy / f.name).symlink_to(f)
    return "minilm", str(copy)


@pytest.mark.slow
def test_sweep_two_models_two_concepts_past_a_failure(two_models, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["sweep", "--models", ",".join([*two_models, "gpt2"]), "--concepts",
            "royalty,negation,stripes", "--layers", "0", "1", "--no-importance", "--no-ablate",
            "--quiet", "--out", str(out)]
    assert main(argv) == 1  # gpt2 has no weights offline: reported, and the sweep went on
    text = capsys.readouterr().out
    assert "4 ran, 2 skipped, 1 failed" in text, text
    assert "cannot load" in text and "vision concepts" in text
    index = out / "reports" / "index.html"
    assert index.is_file() and f"report set: {index}" in text
    from neurolens.store import connect

    con = connect(out / "store")
    got = sorted(con.execute("select model, concept, count(*) from scores "
                             "where concept not like '%+control' group by all").fetchall())
    assert got == [(m, c, 2 * 1536) for m in ("minilm", "minilm-twin") for c in ("negation", "royalty")]
    # run again: everything already done is skipped
    assert main(["sweep", "--models", "minilm", "--concepts", "royalty", "--layers", "0", "1",
                 "--no-importance", "--no-ablate", "--no-report", "--quiet", "--out", str(out)]) == 0
    assert "0 ran, 1 skipped, 0 failed" in capsys.readouterr().out


def test_progress_is_quiet_when_not_a_terminal(monkeypatch):
    from neurolens.progress import Bars

    buf = io.StringIO()
    monkeypatch.setattr("sys.stderr", buf)
    with Bars() as bars, bars.stage("extract", 3) as tick:
        tick(3)
        bars.log("hello")
    assert buf.getvalue() == ""


def test_sweep_validates_by_default_and_run_does_not():
    import argparse

    from neurolens.commands import run as run_cmd
    from neurolens.commands import sweep as sweep_cmd

    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd")
    run_cmd.add_parser(sub)
    sweep_cmd.add_parser(sub)
    cfg = lambda argv, mod: mod.config(ap.parse_args(argv), "minilm", "negation")  # noqa: E731
    assert cfg(["sweep"], sweep_cmd).ablate is True
    assert cfg(["sweep", "--no-ablate"], sweep_cmd).ablate is False
    assert cfg(["run", "--model", "m"], run_cmd).ablate is False
    assert cfg(["run", "--model", "m", "--ablate"], run_cmd).ablate is True
    assert cfg(["run", "--model", "m"], run_cmd).ablate_methods == "zero"
    with pytest.raises(SystemExit):
        ap.parse_args(["sweep", "--ablate", "--no-ablate"])


def test_sweep_splits_all_and_lists():
    from neurolens.sweeps import _names as _split

    assert _split("all", ["a", "b"]) == ["a", "b"]
    assert _split(" b, a ,b,,", ["a", "b"]) == ["b", "a"]
    assert _split("c,all", ["a", "b"]) == ["c", "a", "b"]
