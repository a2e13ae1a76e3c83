"""Fuzzing the custom-probe loader: any malformed input is one ProbeError line, never a traceback."""
from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurolens.probes import ProbeError, ProbeSet, load_probe_file

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
words = st.text(st.characters(codec="utf-8"), min_size=0, max_size=12)
keys = st.sampled_from(["concept", "positive", "negative", "description", "positive_dir", "text",
                        "group", "target", "label", "extra"])
item = st.one_of(words, st.integers(), st.none(),
                 st.dictionaries(keys, st.one_of(words, st.integers(), st.none()), max_size=4))
near_valid_doc = st.fixed_dictionaries(
    {"positive": st.lists(item, max_size=25), "negative": st.lists(item, max_size=25)},
    optional={"concept": st.one_of(words, st.integers()), "description": words, "extra": json_values},
)
row = st.fixed_dictionaries({"text": st.one_of(words, st.integers()),
                             "label": st.sampled_from([1, 0, "positive", "negative", "2", True, None])},
                            optional={"group": words, "target": words, "x": words})


def _check(name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            ps = load_probe_file(path)
        except ProbeError as exc:
            msg = str(exc)
            assert msg and "\n" not in msg and "\r" not in msg
            assert name in msg or "probe" in msg
            return
    assert isinstance(ps, ProbeSet)
    assert ps.n_pos >= 10 and ps.n_neg >= 10
    for part in ("train", "test"):
        assert {e.label for e in ps.split(part)} == {0, 1}
    assert not {e.group for e in ps.split("train")} & {e.group for e in ps.split("test")}


@SETTINGS
@given(st.sampled_from(["p.json", "p.jsonl", "p.csv"]), st.binary(max_size=300))
def test_random_bytes(name: str, data: bytes) -> None:
    _check(name, data)


@SETTINGS
@given(json_values)
def test_random_json_structures(doc) -> None:
    _check("p.json", json.dumps(doc).encode())
    _check("p.jsonl", "\n".join(json.dumps(x) for x in (doc if isinstance(doc, list) else [doc])).encode())


@SETTINGS
@given(near_valid_doc)
def test_near_valid_json(doc: dict) -> None:
    _check("p.json", json.dumps(doc).encode())


@SETTINGS
@given(st.lists(row, max_size=30))
def test_near_valid_jsonl(rows: list[dict]) -> None:
    _check("p.jsonl", "\n".join(json.dumps(r) for r in rows).encode())


@SETTINGS
@given(st.lists(st.sampled_from(["text", "label", "group", "target", "other", "Text "]), min_size=1,
                max_size=5),
       st.lists(st.lists(st.one_of(words, st.sampled_from(["1", "0", "positive", ""])), max_size=5),
                max_size=30))
def test_near_valid_csv(header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    _check("p.csv", buf.getvalue().encode("utf-8", "surrogatepass"))


@SETTINGS
@given(st.integers(10, 40), st.integers(10, 40), st.booleans())
def test_valid_docs_always_load(n_pos: int, n_neg: int, grouped: bool) -> None:
    def items(prefix: str, n: int) -> list:
        return [{"text": f"{prefix} {i}", "group": f"{prefix}{i % 3}"} if grouped else f"{prefix} {i}"
                for i in range(n)]
    doc = {"concept": "fuzz", "positive": items("yes", n_pos), "negative": items("no", n_neg)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ok.json"
        path.write_text(json.dumps(doc))
        ps = load_probe_file(path)
    assert (ps.n_pos, ps.n_neg) == (n_pos, n_neg)
    assert {e.label for e in ps.split("test")} == {0, 1}


def test_deeply_nested_json() -> None:
    _check("p.json", b"[" * 100000)
    _check("p.json", b"{\"positive\": " + b"[" * 50000 + b"]" * 50000 + b"}")
    _check("p.json", b"{\"positive\": " + b"9" * 5000 + b"}")
    _check("p.csv", b"text,label\n\"" + b"x" * 200000 + b"\",1\n")
    _check("p.csv", b"text,label\nab\x00c,1\n")
