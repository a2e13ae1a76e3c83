"""A neuron page in headless chromium: no console errors, no network request, and corpus text
with a <script> in it shown as text, never run (MiniLM's tokenizer keeps the tag's pieces)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_browser import CHROMIUM, Browser, png_stats  # noqa: E402

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")]

HOSTILE = "<script>window.__xss = 1; alert(1)</script> the king and the queen <b>bold</b>"


def test_neuron_page_renders_offline_and_escapes_corpus_text(minilm, tmp_path):
    from neurolens.api import Model

    corpus = tmp_path / "hostile.txt"
    lines = [HOSTILE] + [f"line {i}: the {w} walked into the room" for i, w in
                         enumerate(["farmer", "king", "dog", "queen", "teacher"] * 8)]
    corpus.write_text("\n".join(lines))
    m = Model(minilm)
    r = m.scan(str(corpus), layers=[5], out=tmp_path / "out", k=5, length=16, progress=False)
    assert r.layers == [5] and r.corpus == "hostile"
    # a neuron that peaks inside the hostile line, so its page holds it
    from neurolens.api import Store

    row = Store(tmp_path / "out").sql(
        "select neuron from corpus_top where kind = 'top' and excerpt_id = 0 "
        "and list_contains(tokens, 'script') order by activation desc limit 1")
    assert row.height == 1
    page = m.neuron(5, int(row["neuron"][0]), out=tmp_path / "out")
    assert "<iframe srcdoc=" in page._repr_html_()
    b = Browser(tmp_path / "profile")
    try:
        b.open_page()
        b.load(page.path.as_uri())
        assert b.errors() == []
        assert [u for u in b.requests() if not u.startswith(("file:", "data:", "about:"))] == []
        assert b.dialogs() == []
        assert b.eval("window.__xss === undefined")
        text = b.eval("document.body.innerText")
        assert "script" in text and "<" in text
        assert b.eval("document.querySelectorAll('.ex').length") >= 5
        assert b.eval("document.querySelectorAll('svg.hist rect').length") > 10
        w, h, colours = png_stats(b.screenshot(tmp_path / "neuron.png"))
        assert w == 1280 and h > 400 and colours > 8
    finally:
        b.close()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)
