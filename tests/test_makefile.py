"""`make sweep`: both embedded models × the four headline concepts with validation by
default; `CONCEPTS=all` every built-in concept."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _sweep_line(*extra: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("no make")
    out = subprocess.run(["make", "-n", "-s", "sweep", *extra], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    line = next(l for l in out.splitlines() if " sweep " in l and "neurolens" in l)
    return line.split()


def _arg(words: list[str], flag: str) -> str:
    return words[words.index(flag) + 1]


def test_default_sweep_is_the_headline_concepts_validated():
    from neurolens.probes import list_concepts

    words = _sweep_line()
    concepts = _arg(words, "--concepts").split(",")
    assert concepts == ["royalty", "negation", "past_tense", "sentiment"]
    assert set(concepts) <= {c.name for c in list_concepts()}
    assert _arg(words, "--models") == "minilm,smollm2" and "--ablate" in words


def test_concepts_all_sweeps_every_concept():
    assert _arg(_sweep_line("CONCEPTS=all"), "--concepts") == "all"
