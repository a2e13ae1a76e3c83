"""Concept probes: built-in text and vision concepts, and custom probe files.

The engine only ever sees a `ProbeSet`; where it came from (a built-in data file,
a procedural image generator, or a user's file) is decided here.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import text as _text
from . import vision as _vision
from .custom import load_probe_file
from .types import Example, ProbeError, ProbeSet
from .vision import load_image

def control_of(probes: ProbeSet) -> ProbeSet | None:
    """The lexical control of a built-in text concept (None for anything else)."""
    if probes.source != "builtin" or probes.modality != "text" or probes.concept not in _text.concept_names():
        return None
    return load_concept(_text.control_name(probes.concept))


__all__ = [
    "ConceptInfo", "control_of", "Example", "ProbeError", "ProbeSet",
    "list_concepts", "load_concept", "load_probe_file", "load_probes", "load_image",
]


@dataclass(frozen=True)
class ConceptInfo:
    """What `neurolens concepts` shows for one built-in concept."""

    name: str
    modality: str
    description: str
    n_pos: int
    n_neg: int
    groups: list[str]
    n_train_groups: int = 0
    n_test_groups: int = 0

    def to_dict(self) -> dict:
        """The group counts matter: the group is the unit of inference, so they bound the power."""
        return {"name": self.name, "modality": self.modality, "description": self.description,
                "n_pos": self.n_pos, "n_neg": self.n_neg, "n_groups": len(self.groups),
                "n_train_groups": self.n_train_groups, "n_test_groups": self.n_test_groups,
                "groups": list(self.groups)}


def _builtin() -> dict[str, str]:
    """Built-in concept name -> modality (text first, then vision)."""
    out = {n: "text" for n in _text.concept_names()}
    out.update({n: "vision" for n in _vision.concept_names()})
    return out


def load_concept(name: str) -> ProbeSet:
    """A built-in concept by name (or `<text concept>+control`, its lexical control); a fresh
    ProbeSet each call (examples are shared and frozen)."""
    modality = _builtin().get(name) if isinstance(name, str) else None
    if modality is None and isinstance(name, str) and _text.is_control(name):
        modality = "text"
    if modality is None:
        raise ProbeError(f"unknown concept {name!r}; known: {', '.join(_builtin())}")
    mod = _text if modality == "text" else _vision
    return ProbeSet(concept=name, modality=modality, examples=list(mod.build(name)),
                    source="builtin", description=mod.describe(name))


def list_concepts() -> list[ConceptInfo]:
    """Every built-in concept with its counts and groups (first-seen order)."""
    out = []
    for name in _builtin():
        ps = load_concept(name)
        groups = list(dict.fromkeys(e.group for e in ps.examples))
        n_train = len({e.group for e in ps.examples if e.split == "train"})
        out.append(ConceptInfo(name, ps.modality, ps.description, ps.n_pos, ps.n_neg, groups,
                               n_train, len(groups) - n_train))
    return out


def load_probes(concept: str | None = None, probes_file: str | None = None) -> ProbeSet:
    """What `--concept` / `--probes` ask for: a file wins, and a concept name then renames it."""
    if probes_file:
        ps = load_probe_file(probes_file)
        if concept and concept != ps.concept:
            ps.concept = concept
        return ps
    if concept:
        return load_concept(concept)
    raise ProbeError("give a concept name (see `neurolens concepts`) or a probes file")
