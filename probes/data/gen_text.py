"""Write the built-in text probes (`data/text/*.json`) from their sources (`data/text_src/`).

Run from the repository root: ``python -m neurolens.probes.data.gen_text``. The output is
committed; this script is how it was made, so the data can be checked and rebuilt.

What it guarantees (tests/test_probe_confounds.py checks the output):
* every group is one word pair (or one construction) and draws its own frames: train groups
  rotate through the concept's train frames, test groups use only its test frames, which no
  train group uses (and test groups' words belong to no train group);
* the split is the usual hash order of the group names (probes/split.py), fixed here and
  written into the file, so that frames can be kept apart;
* the lexical control of each concept has the same groups, frames and negatives, with the
  concept word replaced by an ordinary word: from a pool of words of the same class chosen by
  word frequency (wordfreq's Zipf scale) and length, or, for the grammatical concepts
  (`"control": "derange"`), the contrast word of another group, so both sides are ordinary
  words of the same kind and no concept is present.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from neurolens.probes.split import assign_test_groups

HERE = Path(__file__).parent
SRC, OUT = HERE / "text_src", HERE / "text"
PER_GROUP = 5          # frames per group (and so pairs per group)
SLOT = "{w}"

OBJECTS = ["pen", "key", "phone", "towel", "wallet", "hammer", "scarf", "notebook", "brush", "glove", "coin",
           "ruler", "sponge", "stapler", "remote", "charger", "umbrella", "calculator", "lighter", "comb",
           "battery", "envelope", "marker", "screwdriver", "tape", "ticket", "thermometer", "flashlight", "sock",
           "spoon", "chair", "table", "lamp", "box", "bottle", "clock", "basket", "bucket", "blanket", "pillow",
           "book", "bag", "cup", "shoe", "hat", "bench", "ladder", "bicycle", "radio", "kettle", "broom", "candle",
           "mirror", "bowl", "sofa", "plate", "vase", "drawer", "toaster", "suitcase", "carpet", "jar", "rope",
           "helmet", "folder", "cushion", "shovel", "wheel", "needle", "button", "doorbell", "printer", "stool"]
PEOPLE = ["singer", "pilot", "chef", "tourist", "gardener", "barber", "musician", "photographer", "architect",
          "mayor", "student", "lawyer", "judge", "soldier", "poet", "banker", "dancer", "actor", "neighbor",
          "reporter", "engineer", "farmer", "teacher", "baker", "plumber", "clerk", "tailor", "driver", "sailor",
          "painter", "carpenter", "mechanic", "librarian", "pharmacist", "scientist", "accountant", "cashier",
          "janitor", "coach", "editor", "guide", "guard", "officer", "detective", "professor", "secretary",
          "courier", "surveyor", "welder", "florist", "jeweler", "locksmith", "optician", "typist",
          "cleaner", "fireman", "lifeguard", "bricklayer", "upholsterer", "technician"]
NAMES = ["Sophie", "Lucas", "Henry", "Grace", "Victor", "Diana", "Oscar", "Clara", "Martin", "Irene", "Simon",
         "Nora", "Felix", "Ruth", "Hugo", "Alan", "Ella", "Frank", "Rosa", "Leo", "Ivan", "Mia", "Paul", "Amy",
         "Carl", "Eva", "Ben", "Zoe", "Adam", "Lily", "Sam", "Kate", "Jack", "Lucy", "Tom", "Ruby", "Albert",
         "Charlotte", "Elizabeth", "Christopher", "Benjamin", "Josephine", "Catherine", "Nicholas"]
SUBJECTS = ["physics", "biology", "math", "drama", "art", "jazz", "teaching", "farming", "nursing", "sculpture",
            "sketching", "quilting", "weaving", "gaming", "blogging", "traveling", "acting", "politics",
            "religion", "design", "fashion", "languages", "theater", "law", "algebra", "botany", "genealogy",
            "ceramics", "accounting", "grammar", "marketing", "carpentry", "psychology", "statistics",
            "translation", "architecture", "printing", "banking"]
ADJECTIVES = ["wooden", "plastic", "metal", "square", "round", "narrow", "thick", "thin", "flat", "empty",
              "open", "closed", "early", "late", "modern", "ancient", "local", "foreign", "public", "private",
              "daily", "weekly", "frozen", "wet", "dry", "hollow", "folded", "rusty", "leather", "woolen",
              "cotton", "paper", "spare", "main", "usual", "recent", "former", "upper", "lower", "rural", "urban",
              "second", "final", "annual", "digital", "outdoor", "indoor", "formal", "casual", "electric"]
STATES = ["awake", "busy", "late", "early", "alone", "ready", "pale", "thin", "short", "tall", "young", "old",
          "free", "outside", "upstairs", "quiet", "barefoot", "dressed", "seated", "standing", "sunburnt",
          "hoarse", "clean", "dirty", "shaved", "soaked", "wrapped", "indoors", "unshaven", "sweaty", "dusty",
          "muddy", "sticky", "wet", "dry", "hot", "cold", "stiff", "sore", "full", "hungry", "thirsty",
          "asleep", "sunbathing", "bald", "blond", "tanned", "shivering", "limping", "yawning", "coughing",
          "sneezing", "dehydrated", "overweight"]
NEUTRAL = ["long", "short", "late", "early", "quiet", "local", "foreign", "modern", "recent", "second", "first",
           "final", "annual", "daily", "weekly", "public", "private", "outdoor", "indoor", "formal", "casual",
           "silent", "digital", "frozen", "spicy", "sweet", "familiar", "typical", "ordinary", "different",
           "similar", "usual", "traditional", "regional", "international", "historical", "seasonal", "open"]

#: the pool each concept's control draws its words from (concepts not named here derange)
POOLS = {"animals": OBJECTS, "food": OBJECTS, "royalty": PEOPLE, "places": NAMES, "sports": SUBJECTS,
         "colors": ADJECTIVES, "numbers": ADJECTIVES, "emotion": STATES, "sentiment": NEUTRAL,
         "law": "medicine", "medicine": "law"}


def _zipf(word: str) -> float:
    from wordfreq import zipf_frequency

    return zipf_frequency(word, "en")


def _frame(f) -> tuple[str, str | None, str | None]:
    return (f, None, None) if isinstance(f, str) else (f["text"], f["pos"], f["neg"])


def _item(frame, pos: str, neg: str) -> list:
    text, tp, tn = _frame(frame)
    i = text.index(SLOT)
    return [text.replace(SLOT, pos, 1), text.replace(SLOT, neg, 1), [i, i + len(pos)], [i, i + len(neg)], tp, tn]


def _pairs(spec: dict) -> list[tuple[str, str, str, str]]:
    """(class, group, positive, negative) for every pair; group names are unique."""
    out = []
    for p in spec["pairs"]:
        if len(p) == 4:
            cls, g, pos, neg = p
        else:
            cls = ""
            g, pos, neg = (p[0], p[0], p[1]) if len(p) == 2 else p
        out.append((cls, g, pos, neg))      # a group named twice holds both pairs (one auxiliary)
    return out


def _frames(spec: dict, cls: str) -> tuple[list, list]:
    src = spec["classes"][cls] if cls else spec
    return src["frames"], src["test_frames"]


def _controls(name: str, spec: dict, pairs: list) -> list[str]:
    """The ordinary word that replaces each pair's concept word in the control."""
    pool = POOLS.get(name, "derange")
    used = {w.lower() for _, _, p, n in pairs for w in (p, n)}
    if pool == "derange":        # the contrast of another group of the same class, closest in length
        out, taken = [], set()
        for i, (cls, _, pos, neg) in enumerate(pairs):
            cands = [(abs(len(n) - len(pos)), (j - i) % len(pairs), j, n) for j, (c, _, _, n) in enumerate(pairs)
                     if c == cls and n != neg and j not in taken]
            if not cands:      # the last of a class: any other group's contrast of the class
                cands = [(0, 0, j, n) for j, (c, _, _, n) in enumerate(pairs) if c == cls and n != neg]
            best = min(cands)
            taken.add(best[2])
            out.append(best[3])
        return out
    if isinstance(pool, str):     # another concept's negatives, then objects
        pool = [p[-1] for p in json.loads((SRC / f"{pool}.json").read_text())["pairs"]] + OBJECTS
    cands = [w for w in dict.fromkeys(pool) if w.lower() not in used]
    if len(cands) < len(pairs):
        raise SystemExit(f"{name}: control pool has {len(cands)} words for {len(pairs)} groups")
    z = {w: _zipf(w) for w in cands}
    out = []
    for _, _, pos, _ in pairs:      # greedy: nearest in frequency, then length, not reused
        zp = _zipf(pos)
        best = min(cands, key=lambda w: (abs(z[w] - zp) + 0.25 * abs(len(w) - len(pos)), w))
        cands.remove(best)
        out.append(best)
    return out


def generate(name: str) -> dict:
    spec = json.loads((SRC / f"{name}.json").read_text(encoding="utf-8"))
    pairs = _pairs(spec)
    test = assign_test_groups(name, {g: [1, 0] for _, g, _, _ in pairs})
    assert test, name
    ctrl = _controls(name, spec, pairs)
    groups, control = {}, {}
    k_train = {}
    for (cls, g, pos, neg), c in zip(pairs, ctrl):
        train_f, test_f = _frames(spec, cls)
        if g in test:
            frames = test_f[:PER_GROUP] if len(test_f) <= PER_GROUP else \
                [test_f[(len(groups) + j) % len(test_f)] for j in range(PER_GROUP)]
        else:
            k = k_train[cls] = k_train.get(cls, -1) + 1
            n = len(train_f)
            step = next(s for s in range(3, n + 3) if math.gcd(s, n) == 1)    # n different windows
            frames = [train_f[(step * k + j) % n] for j in range(min(PER_GROUP, n))]
        split = "test" if g in test else "train"
        groups.setdefault(g, {"group": g, "split": split, "items": []})["items"] += \
            [_item(f, pos, neg) for f in frames]
        control.setdefault(g, {"group": g, "split": split, "items": []})["items"] += \
            [_item(f, c, neg)[:4] + [None, None] for f in frames]
    return {"name": name, "description": spec.get("description", ""),
            "generated_by": "probes/data/gen_text.py from probes/data/text_src",
            "groups": list(groups.values()),
            "control": {"description": f"lexical control of {name}: the same frames and negatives, the concept "
                                       "word replaced by an ordinary word of the same kind (no concept)",
                        "groups": list(control.values())}}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for src in sorted(SRC.glob("*.json")):
        data = generate(src.stem)
        (OUT / src.name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{src.stem}: {len(data['groups'])} groups, "
              f"{sum(len(g['items']) for g in data['groups'])} pairs")


if __name__ == "__main__":
    main()
