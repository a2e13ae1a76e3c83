"""docs/python.md and the README's Python script run as written (MiniLM, two layers)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("minilm-docs")]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def readme_python_script() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = python_blocks(section)
    assert len(blocks) == 1
    return blocks[0]


def test_docs_python_walkthrough_runs(tmp_path, monkeypatch):
    blocks = python_blocks((ROOT / "docs" / "python.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "__docs__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/python.md block {i + 1}", "exec"), ns)  # noqa: S102
    assert (tmp_path / "nl-out" / "store").is_dir()


def test_readme_script_finds_two_concepts_without_the_cli(tmp_path):
    script = readme_python_script()
    assert "neurolens.cli" not in script and "subprocess" not in script
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                       timeout=900, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert out.count("shape: (5, ") == 2, out          # two polars frames of top(5)
    assert "negation" in out and "royalty" in out
    report = Path(out.split("report:", 1)[1].split()[0])
    assert report.is_file() and report.suffix == ".html" and report.stat().st_size > 10_000
    assert report.parent == tmp_path / "nl-out" / "reports"
