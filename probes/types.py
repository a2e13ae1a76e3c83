"""The probe data model: what every concept dataset, built-in or custom, becomes."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from neurolens.errors import ProbeError  # noqa: F401 - re-exported: its home is neurolens.errors

Modality = Literal["text", "vision"]


@dataclass(frozen=True)
class Example:
    """One probe example.

    `label` is 1 for the concept, 0 for its contrast. `group` is the phrasing or
    sub-concept (used for consistency and for the group-wise train/test split).
    `span` is the [start, end) character span of the concept word in `text`, when
    there is one (for `concept` pooling); negatives carry the span of the word that
    replaced it. `target` is a continuation whose probability depends on the concept
    (for causal / masked LM confidence). `image` is an image reference for vision:
    `builtin:<concept>/<seed>` or a file path.
    """

    example_id: int
    label: int
    group: str
    split: Literal["train", "test"]
    text: str | None = None
    image: str | None = None
    span: tuple[int, int] | None = None
    target: str | None = None
    pair_id: int | None = None


@dataclass
class ProbeSet:
    """A concept's examples, in a fixed order, with a content hash that names them."""

    concept: str
    modality: Modality
    examples: list[Example]
    source: str = "builtin"
    description: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def sha(self) -> str:
        """The content hash. Examples are frozen, so it is computed once for the same
        example objects (a run asks for it at every stage; 2,000 examples take 0.1 s)."""
        memo = self.__dict__.get("_sha")    # (concept, modality, the examples themselves, sha)
        if (memo is not None and memo[:2] == (self.concept, self.modality)
                and len(memo[2]) == len(self.examples)
                and all(a is b for a, b in zip(memo[2], self.examples))):
            return memo[3]
        h = hashlib.sha256()
        h.update(f"{self.concept}\0{self.modality}\0".encode())
        for e in self.examples:
            h.update(json.dumps(asdict(e), sort_keys=True).encode())
            h.update(b"\n")
        # the memo holds the examples, so none of them can be freed and another take its place
        self.__dict__["_sha"] = (self.concept, self.modality, tuple(self.examples), h.hexdigest()[:16])
        return self.__dict__["_sha"][3]

    @property
    def n_pos(self) -> int:
        return sum(e.label == 1 for e in self.examples)

    @property
    def n_neg(self) -> int:
        return sum(e.label == 0 for e in self.examples)

    def split(self, which: Literal["train", "test"], label: int | None = None) -> list[Example]:
        """The examples of one split (scores and the readout fit on train, validation on test),
        optionally of one label: the one place the train/test filter is written."""
        return in_split(self.examples, which, label)


def in_split(examples: Sequence[Example], which: Literal["train", "test"],
             label: int | None = None) -> list[Example]:
    """`examples` of split `which` (and of `label`, when given), in their order."""
    if which not in ("train", "test"):
        raise ValueError(f"split is 'train' or 'test', not {which!r}")
    return [e for e in examples if e.split == which and (label is None or e.label == label)]
