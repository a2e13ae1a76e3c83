"""Ground truth: small checkpoints with concept neurons planted where we know they are.

`build_planted(family, out_dir, seed=...)` writes a real Hugging Face checkpoint
(`save_pretrained`: config, weights, tokenizer or image processor) whose weights are
the default random initialisation except for a few hand-set units:

* **planted** neurons fire on a concept (royalty words for the text families,
  horizontal stripes for ResNet) and push a target (the token ``crown`` as the next
  or masked token; the ``stripes`` class), so zero-ablating them lowers the
  concept confidence;
* a **polysemantic** neuron fires on the concept *and* on a second one (animal
  words; vertical stripes);
* a **surface** neuron fires on something both sides of every minimal pair share
  (the word ``the``; the mean brightness of the image), so it is not selective;
* the Llama family (gated MLPs) adds a **decoy** (``meta["decoys"]``): its act(gate)
  fires on the concept but its product act(gate) * up, the true neuron, is silent.

Beside the weights the builder writes ``probes.json`` (the custom-probe format of the
design: minimal pairs for the concept), ``probes_secondary.json`` (the polysemantic
neuron's second concept, positives only) and ``planted.json`` (where everything is).
The same seed gives byte-identical weights.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neurolens.probes.types import ProbeSet

FAMILIES = ("gpt2", "bert", "roberta", "resnet", "llama")

PLANTED_FILE = "planted.json"
PROBE_FILE = "probes.json"
SECONDARY_PROBE_FILE = "probes_secondary.json"


@dataclass
class PlantedModel:
    """A built ground-truth checkpoint and what is planted in it.

    Neuron coordinates are ``(layer, neuron)`` in the engine's numbering: the MLP
    hidden unit of a transformer block, or the output channel of a ResNet block
    (blocks numbered from 0 over all stages).
    """

    path: Path
    family: str
    concept: str
    planted: list[tuple[int, int]]
    polysemantic: tuple[int, int]
    surface: tuple[int, int]
    target: str
    probes: ProbeSet
    probe_file: Path
    secondary_concept: str = ""
    secondary_probe_file: Path | None = None
    kind: str = ""                    # causal_lm | masked_lm | vision
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def planted_layers(self) -> list[int]:
        return sorted({l for l, _ in self.planted})

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family, "kind": self.kind, "seed": self.seed,
            "concept": self.concept, "target": self.target,
            "planted": [list(x) for x in self.planted],
            "polysemantic": list(self.polysemantic),
            "surface": list(self.surface),
            "secondary_concept": self.secondary_concept,
            "probe_file": self.probe_file.name,
            "secondary_probe_file": self.secondary_probe_file.name if self.secondary_probe_file else None,
            "probe_sha": self.probes.sha,
            "n_pos": self.probes.n_pos, "n_neg": self.probes.n_neg,
            "meta": self.meta,
        }


def build_planted(family: str, out_dir: Path | str, *, seed: int = 0) -> PlantedModel:
    """Build the ground-truth model of `family` into `out_dir` (created if needed)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    from neurolens.engine.models.registry import quiet

    quiet()  # transformers' own save bars would interleave with ours
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if family == "resnet":
        from neurolens.engine.planted.vision import build_resnet
        pm = build_resnet(out, seed=seed)
    elif family == "llama":
        from neurolens.engine.planted.llama import build_llama
        pm = build_llama(out, seed=seed)
    else:
        from neurolens.engine.planted.text import build_text
        pm = build_text(family, out, seed=seed)
    (out / PLANTED_FILE).write_text(json.dumps(pm.to_json(), indent=2) + "\n")
    return pm


def read_planted(path: Path | str) -> dict[str, Any]:
    """The `planted.json` written beside a ground-truth checkpoint."""
    return json.loads((Path(path) / PLANTED_FILE).read_text())
