"""A model, built-in text concepts each beside its lexical control, and a probe whose sides
differ only by a constant word (yesterday / today, no concept): one JSON line per probe
(docs/findings.md).

Usage: python benchmarks/lexical_control_minilm.py CONCEPTS OUT_DIR [MODEL] [DEVICE]
       CONCEPTS: comma-separated, `all` for every built-in text concept, `constant_word` for
       the confounded probe.
"""
from __future__ import annotations

import json
import sys
import time

import neurolens as nl
from neurolens.probes.text import concept_names
from neurolens.probes.types import Example, ProbeSet

NOUNS = ["river", "garden", "letter", "window", "market", "bridge", "song", "storm", "field", "bottle",
         "horse", "city", "teacher", "apple", "lamp", "coat", "road", "train", "cup", "door", "forest",
         "ship", "table", "cloud", "house", "pencil", "chair", "stone", "hill", "boat", "shirt", "glass"]
FRAMES = ("We walked to the {n} {w}.", "She saw the {n} {w}.", "The {n} was quiet {w}.",
          "He painted the {n} {w}.", "They sold the {n} {w}.")


def constant_word_probe(pos: str = "yesterday", neg: str = "today") -> ProbeSet:
    ex = []
    for g, n in enumerate(NOUNS):
        for frame in FRAMES:
            for label, w in ((1, pos), (0, neg)):
                ex.append(Example(len(ex), label, f"g{g}", "test" if g % 3 == 0 else "train",
                                  text=frame.replace("{n}", n).replace("{w}", w)))
    return ProbeSet("constant_word", "text", ex, source="custom")


def row(f: nl.Finding) -> dict:
    sc, s = f.scores, f.summary()
    ranked = sc.filter(sc["rank"].is_not_null())
    return {"model": f.model, "concept": f.concept, "scored": sc.height, "significant": s["significant"],
            "opposite": s["opposite"], "lexical": s["lexical"],
            "replicated": int(ranked["replicated"].fill_null(False).sum()),
            "baseline": f.baseline, "note": f.note}


def main() -> None:
    names = sys.argv[1].split(",") if sys.argv[1] != "all" else ["constant_word", *concept_names()]
    out = sys.argv[2]
    model = sys.argv[3] if len(sys.argv) > 3 else "minilm"
    m = nl.load(model, device=sys.argv[4] if len(sys.argv) > 4 else None)
    for c in names:
        t0 = time.perf_counter()
        probe = constant_word_probe() if c == "constant_word" else c
        f = m.find(probe, out=out, importance=False, report=False, progress=False)
        r = row(f)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
