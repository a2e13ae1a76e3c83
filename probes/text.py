"""Built-in text concepts: minimal pairs generated from frames and word lists.

Each data file under `data/text/` holds frames with a `{w}` slot (optionally
more slots filled from `fill`) and word pairs `[group?, positive, negative]`.
Every frame is filled once with the positive word and once with the negative,
so the two examples of a pair differ only in the concept word.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .split import assign_test_groups, labels_by_group
from .types import Example, ProbeError

DATA_DIR = Path(__file__).parent / "data" / "text"
SLOT = "{w}"


def _subst(s: str, mapping: dict[str, str]) -> str:
    for k, v in mapping.items():
        s = s.replace("{" + k + "}", v)
    return s


def _frames(spec: dict) -> list[tuple[str, str | None, str | None]]:
    """Expand frames × fill into (template, pos_target, neg_target)."""
    fills = spec.get("fill") or [{}]
    out = []
    for frame in spec["frames"]:
        for fill in fills:
            if isinstance(frame, str):
                out.append((_subst(frame, fill), None, None))
            else:
                out.append((_subst(frame["text"], fill), _subst(frame["pos"], fill),
                            _subst(frame["neg"], fill)))
    return out


def _pairs(spec: dict) -> list[tuple[str, str, str]]:
    out = []
    for p in spec["pairs"]:
        group, pos, neg = (p[0], p[0], p[1]) if len(p) == 2 else p
        out.append((group, pos, neg))
    return out


def _fill(template: str, word: str) -> tuple[str, tuple[int, int]]:
    start = template.index(SLOT)
    return template.replace(SLOT, word, 1), (start, start + len(word))


@lru_cache(maxsize=None)
def concept_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in DATA_DIR.glob("*.json")))


@lru_cache(maxsize=None)
def _spec(name: str) -> dict:
    path = DATA_DIR / f"{name}.json"
    if not path.is_file():
        raise ProbeError(f"unknown text concept '{name}'")
    return json.loads(path.read_text(encoding="utf-8"))


def describe(name: str) -> str:
    return _spec(name).get("description", "")


@lru_cache(maxsize=None)
def build(name: str) -> tuple[Example, ...]:
    """All examples of a built-in text concept, pos/neg interleaved by pair."""
    spec = _spec(name)
    raw = []  # (group, label, text, span, target, pair_id)
    pair_id = 0
    for group, pos, neg in _pairs(spec):
        for template, t_pos, t_neg in _frames(spec):
            for label, word, target in ((1, pos, t_pos), (0, neg, t_neg)):
                text, span = _fill(template, word)
                raw.append((group, label, text, span, target, pair_id))
            pair_id += 1
    test = assign_test_groups(name, labels_by_group([(r[0], r[1]) for r in raw]))
    return tuple(
        Example(example_id=i, label=lab, group=g, split="test" if g in test else "train",
                text=text, span=span, target=target, pair_id=pid)
        for i, (g, lab, text, span, target, pid) in enumerate(raw)
    )
