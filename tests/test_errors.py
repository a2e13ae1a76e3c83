"""Every error a user can cause ends in one line on stderr (`neurolens: error: ...`) and exit
status 2, never a traceback, and loses nothing already in the store."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from neurolens.cli import main

pytestmark = pytest.mark.xdist_group("errors")


def dedup_probes(src: Path, dst: Path) -> Path:
    """The planted probe file with repeated examples dropped (the loader rejects repeats)."""
    d = json.loads(src.read_text())
    for side in ("positive", "negative"):
        seen, keep = set(), []
        for x in d[side]:
            t = x["text"] if isinstance(x, dict) else x
            if t not in seen:
                seen.add(t)
                keep.append(x)
        d[side] = keep
    dst.write_text(json.dumps(d))
    return dst


def _texts(n: int, word: str) -> list[str]:
    return [f"the {word} number {i} came home" for i in range(n)]


@pytest.fixture(scope="module")
def env(tmp_path_factory, planted_factory):
    """A store holding one finished run, plus every bad input the catalogue needs."""
    pm = planted_factory("gpt2")
    d = tmp_path_factory.mktemp("errors")
    probes = dedup_probes(pm.probe_file, d / "probes.json")
    out = d / "out"
    assert main(["run", "--model", str(pm.path), "--probes", str(probes), "--layers", "0", "1",
                 "--no-importance", "--no-report", "--out", str(out), "--quiet"]) == 0

    pos, neg = _texts(12, "king"), _texts(12, "man")
    w = lambda name, obj: (d / name).write_text(obj if isinstance(obj, str) else json.dumps(obj))  # noqa: E731
    w("empty.json", "")
    w("bad.json", "{bad")
    w("few.json", {"concept": "x", "positive": pos[:2], "negative": neg[:2]})
    w("dup.json", {"concept": "x", "positive": pos + [pos[0]], "negative": neg})
    w("unknown_key.json", {"concept": "x", "positive": pos, "negative": neg, "colour": 1})
    w("not_list.json", {"concept": "x", "positive": "a king", "negative": neg})
    w("int_items.json", {"concept": "x", "positive": list(range(12)), "negative": neg})
    w("no_concept.json", {"positive": pos, "negative": neg})
    w("bad.jsonl", '{"text": "a", "label": 1}\nnot json\n')
    w("bad.csv", "foo,bar\n1,2\n")
    w("probes.txt", "hello")
    w("a_file", "hi")
    (d / "no_sides").mkdir()
    vis = d / "vis"
    for side in ("positive", "negative"):
        (vis / side).mkdir(parents=True)
        for i in range(12):
            shutil.copy(d / "a_file", vis / side / f"{i}.png")  # not images at all
    (d / "not_ckpt").mkdir()
    (d / "t5").mkdir()
    w("t5/config.json", {"model_type": "t5"})
    (d / "bad_config").mkdir()
    w("bad_config/config.json", '{"model_type": ')
    (d / "no_weights").mkdir()
    shutil.copy(pm.path / "config.json", d / "no_weights" / "config.json")
    corrupt = d / "corrupt"
    shutil.copytree(out, corrupt)
    for f in (corrupt / "store" / "scores").rglob("*.parquet"):
        f.write_bytes(f.read_bytes()[:300])
    return {"M": str(pm.path), "P": str(probes), "D": str(d), "O": str(out), "C": str(corrupt)}


def snapshot(out: str) -> dict[str, str]:
    """Every published file of the store (runs/ excepted: an error may add a run's row)."""
    root = Path(out) / "store"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.parts[len(root.parts)] not in
            ("runs", "_staging") and p.name not in (".lock", "views.sql")}


# (id, argv with {M} model dir, {P} probes, {D} bad inputs, {O} finished store, {C} corrupt one,
#  a fragment the error line must contain)
CATALOGUE = [
    ("unknown-model", "run --model nosuchmodel --concept royalty --out {O}", "unknown model"),
    ("unknown-concept", "run --model {M} --concept nosuchconcept --out {O}", "unknown concept"),
    ("layer-out-of-range", "run --model {M} --probes {P} --layers 9 --out {O}", "out of range"),
    ("negative-layer", "run --model {M} --probes {P} --layers -1 --out {O}", "out of range"),
    ("layer-not-int", "run --model {M} --probes {P} --layers x --out {O}", "invalid int"),
    ("empty-probe-file", "run --model {M} --probes {D}/empty.json --out {O}", "bad JSON"),
    ("bad-json", "run --model {M} --probes {D}/bad.json --out {O}", "bad JSON"),
    ("too-few-examples", "run --model {M} --probes {D}/few.json --out {O}", "need at least"),
    ("duplicate-examples", "run --model {M} --probes {D}/dup.json --out {O}", "appears twice"),
    ("unknown-key", "run --model {M} --probes {D}/unknown_key.json --out {O}", "unknown key"),
    ("wrong-type", "run --model {M} --probes {D}/not_list.json --out {O}", "must be a list"),
    ("wrong-item-type", "run --model {M} --probes {D}/int_items.json --out {O}", "must be a string"),
    ("bad-jsonl", "run --model {M} --probes {D}/bad.jsonl --out {O}", "bad JSON"),
    ("bad-csv", "run --model {M} --probes {D}/bad.csv --out {O}", "unknown key"),
    ("probe-file-type", "run --model {M} --probes {D}/probes.txt --out {O}", "unsupported"),
    ("missing-probe-file", "run --model {M} --probes {D}/missing.json --out {O}", "not found"),
    ("dir-without-sides", "run --model {M} --probes {D}/no_sides --out {O}", "not found"),
    ("unreadable-images", "run --model {M} --probes {D}/vis --out {O}", "unreadable image"),
    ("no-concept-or-probes", "run --model {M} --out {O}", "--concept"),
    ("out-unwritable", "run --model {M} --probes {P} --out /proc/neurolens-nope", "cannot write"),
    ("out-is-a-file", "run --model {M} --probes {P} --out {D}/a_file", "Not a directory"),
    ("bad-dtype", "run --model {M} --probes {P} --dtype float64 --out {O}", "--dtype"),
    ("bad-pooling", "run --model {M} --probes {P} --pooling median --out {O}", "--pooling"),
    ("cuda-without-gpu", "run --model {M} --probes {P} --device cuda:99 --out {O}", "cuda"),
    ("bad-device", "run --model {M} --probes {P} --device banana --out {O}", "unknown device"),
    ("batch-size-0", "run --model {M} --probes {P} --batch-size 0 --out {O}", "--batch-size"),
    ("top-k-0", "run --model {M} --probes {P} --top-k 0 --out {O}", "--top-k"),
    ("vision-concept-text-model", "run --model {M} --concept stripes --out {O}", "vision concept"),
    ("missing-weights-offline", "run --model gpt2 --concept royalty --out {O}", "cannot load gpt2"),
    ("not-a-checkpoint", "run --model {D}/not_ckpt --concept royalty --out {O}", "not a checkpoint"),
    ("model-is-a-file", "run --model {D}/a_file --concept royalty --out {O}", "unknown model"),
    ("unsupported-architecture", "run --model {D}/t5 --concept royalty --out {O}", "not supported"),
    ("corrupt-config", "run --model {D}/bad_config --concept royalty --out {O}", "cannot load"),
    ("no-weights", "run --model {D}/no_weights --probes {P} --out {O}", "cannot load"),
    ("unknown-command", "frobnicate", "invalid choice"),
    ("missing-required", "run --concept royalty", "--model"),
    ("unknown-query", "query --name nosuch --out {O}", "unknown query"),
    ("bad-sql", "query 'SELEC 1' --out {O}", "SQL"),
    ("bad-param", "query --name top_neurons --param nokv --out {O}", "NAME=VALUE"),
    ("unknown-param", "query --name top_neurons --param zz=1 --out {O}", "no parameter"),
    ("bad-format", "query --format xml 'select 1' --out {O}", "--format"),
    ("query-no-store", "query 'select 1' --out {D}/nothing-here", "no store"),
    ("report-unknown-model", "report --model nosuch --concept royalty --out {O}", "nosuch"),
    ("report-no-store", "report --out {D}/nothing-here", "no store"),
    ("corrupt-parquet-query", "query 'select count(*) from scores' --out {C}", "cannot be read"),
    ("corrupt-parquet-report", "report --out {C}", "cannot be read"),
    ("corrupt-parquet-run", "run --model {M} --probes {P} --layers 0 1 --no-importance --out {C}",
     "corrupt"),
    ("sweep-unknown-concept", "sweep --models minilm --concepts nosuch --out {O}", "unknown concept"),
    ("sweep-unknown-model", "sweep --models nosuchmodel --concepts royalty --out {O}", "unknown model"),
    ("sweep-no-models", "sweep --models , --concepts royalty --out {O}", "no model"),
    ("sweep-top-k-0", "sweep --models minilm --concepts royalty --top-k 0 --out {O}", "--top-k"),
    ("sweep-bad-ablate-method", "sweep --models minilm --concepts royalty --ablate-methods zero,median "
     "--out {O}", "--ablate-methods"),
]


def _argv(template: str, env: dict) -> list[str]:
    import shlex

    return shlex.split(template.format(**env))


@pytest.mark.parametrize("template,fragment", [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_user_error_is_one_line_exit_2(env, template, fragment, capsys):
    before = snapshot(env["O"])
    try:
        rc = main(_argv(template, env))
    except SystemExit as e:  # argparse's exit
        rc = e.code
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("neurolens: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in err
    assert snapshot(env["O"]) == before  # nothing already written was lost or changed
    from neurolens.store import connect

    con = connect(Path(env["O"]) / "store")
    assert con.execute("select count(*) from scores").fetchone()[0] == 2 * 256


def test_catalogue_is_large():
    assert len(CATALOGUE) >= 30


def _cli(args: list[str], *, preexec=None, timeout=300) -> subprocess.CompletedProcess:
    e = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    e.pop("NEUROLENS_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "neurolens", *args], capture_output=True, text=True,
                          env=e, preexec_fn=preexec, timeout=timeout)


@pytest.mark.parametrize("name", ["bad-json", "bad-dtype"])
def test_subprocess_exit_2_one_line(env, name):
    template = next(c[1] for c in CATALOGUE if c[0] == name)
    r = _cli(_argv(template, env))
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("neurolens: error: "), r.stderr


def _small_files(limit: int):
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes then fail with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


@pytest.mark.slow
def test_disk_full_is_one_line_and_keeps_the_store(env, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(env["O"], out)
    before = snapshot(str(out))
    pos, neg = _texts(12, "queen"), _texts(12, "woman")
    probes = tmp_path / "other.json"
    probes.write_text(json.dumps({"concept": "other", "positive": pos, "negative": neg}))
    r = _cli(["run", "--model", env["M"], "--probes", str(probes), "--layers", "0", "1",
              "--no-importance", "--no-report", "--out", str(out)], preexec=_small_files(3000))
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "too large" in lines[0].lower(), r.stderr
    assert snapshot(str(out)) == before
    assert not list((out / "store" / "runs").glob(".*.tmp"))
