"""Words that separate a probe's sides: what all positives (or all negatives) share besides
the concept.

For a token t and a group g, c_g(t) = (occurrences of t in g's positives) - (in g's
negatives). The token's *net share* over groups is m(t) = (#groups with c_g > 0 - #groups
with c_g < 0) / G. A neuron that answers only t, and not the concept, has group differences
d_g proportional to c_g, so its standardised group effect (DESIGN `effect`, mean d_g / sd
d_g) is at most sqrt(m / (1 - m)) whatever its noise (docs/scores.md). So:

* a token separates the sides when |m| >= SEPARATES (1/4): a word-only neuron could then
  reach an effect of sqrt(1/3) = 0.58, which the built-in probes must not allow (the test
  of the built-in probes uses this);
* a probe is confounded when some token has |m| >= CONFOUNDED = g^2 / (1 + g^2) for the
  effect gate g (0.39 for g = 0.8): a neuron for that word alone could pass the gate, so the
  run cannot tell a concept neuron from a word neuron and says so.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence

from neurolens.constants import EFFECT_GATE

from .types import Example

TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
SEPARATES = 0.25
CONFOUNDED = EFFECT_GATE ** 2 / (1.0 + EFFECT_GATE ** 2)


def tokens(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks (`isn't` -> isn, ', t)."""
    return TOKEN.findall(text.lower())


def net_shares(examples: Sequence[Example], split: str | None = None) -> dict[str, float]:
    """m(t) for every token of the text examples (of one split, or all); 0 without groups."""
    diff: dict[str, Counter] = defaultdict(Counter)       # group -> token -> c_g
    for e in examples:
        if e.text is None or (split is not None and e.split != split):
            continue
        sign = 1 if e.label == 1 else -1
        c = diff[e.group]
        for t in tokens(e.text):
            c[t] += sign
    G = len(diff)
    if G == 0:
        return {}
    pos, neg = Counter(), Counter()
    for c in diff.values():
        for t, v in c.items():
            if v > 0:
                pos[t] += 1
            elif v < 0:
                neg[t] += 1
    return {t: (pos[t] - neg[t]) / G for t in set(pos) | set(neg)}


def separating(examples: Sequence[Example], share: float = SEPARATES,
               split: str | None = None) -> dict[str, float]:
    """Tokens whose |net share| reaches `share`, strongest first."""
    m = net_shares(examples, split)
    hit = {t: v for t, v in m.items() if abs(v) >= share}
    return dict(sorted(hit.items(), key=lambda kv: (-abs(kv[1]), kv[0])))


def confound_note(examples: Sequence[Example]) -> str | None:
    """One line when a word (not the concept) could explain every finding of the probe."""
    hit = separating(examples, CONFOUNDED, split="train")
    if not hit:
        return None
    words = ", ".join(f"'{t}' ({'+' if v > 0 else '-'}{abs(v):.0%} of groups)" for t, v in list(hit.items())[:3])
    return (f"the sides differ by the word(s) {words}: a neuron for that word alone could pass, so no "
            f"significant neuron is counted as concept-specific (all flagged lexical)")
