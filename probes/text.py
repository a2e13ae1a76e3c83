"""Built-in text concepts: minimal pairs, each group with its own frames, and their controls.

Each data file under `data/text/` is written by `data/gen_text.py` from `data/text_src/`:
groups (a word pair or a construction) with their split and their items
`[positive text, negative text, positive span, negative span, positive target, negative
target]`, so the two examples of a pair differ only in the concept word. Train groups
rotate through the concept's train frames; test groups use frames and words that no train
group uses. `<concept>+control` is the concept's lexical control: the same groups, frames
and negatives with the concept word replaced by an ordinary word (no concept).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .types import Example, ProbeError

DATA_DIR = Path(__file__).parent / "data" / "text"
CONTROL = "+control"


@lru_cache(maxsize=None)
def concept_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in DATA_DIR.glob("*.json")))


def control_name(concept: str) -> str:
    """The name a concept's lexical control is stored and loaded under."""
    return concept + CONTROL


def is_control(name: str) -> bool:
    return name.endswith(CONTROL) and name[: -len(CONTROL)] in concept_names()


@lru_cache(maxsize=None)
def _spec(name: str) -> dict:
    base = name[: -len(CONTROL)] if name.endswith(CONTROL) else name
    path = DATA_DIR / f"{base}.json"
    if not path.is_file():
        raise ProbeError(f"unknown text concept '{name}'")
    spec = json.loads(path.read_text(encoding="utf-8"))
    return spec["control"] if name.endswith(CONTROL) else spec


def describe(name: str) -> str:
    return _spec(name).get("description", "")


@lru_cache(maxsize=None)
def build(name: str) -> tuple[Example, ...]:
    """All examples of a built-in text concept (or its control), pos/neg interleaved by pair."""
    out: list[Example] = []
    pair_id = 0
    for grp in _spec(name)["groups"]:
        g, split = grp["group"], grp["split"]
        for pos, neg, pspan, nspan, tpos, tneg in grp["items"]:
            for label, text, span, target in ((1, pos, pspan, tpos), (0, neg, nspan, tneg)):
                out.append(Example(example_id=len(out), label=label, group=g, split=split, text=text,
                                   span=(int(span[0]), int(span[1])), target=target, pair_id=pair_id))
            pair_id += 1
    return tuple(out)
