"""Deterministic group-wise train/test split.

Whole groups go to test so that test phrasings are never seen in training; the
order of groups comes from a hash, not from random state, so every run agrees.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict

TEST_FRACTION = 0.3


def _order_key(concept: str, group: str) -> str:
    return hashlib.sha1(f"{concept}\0{group}".encode()).hexdigest()


def assign_test_groups(concept: str, labels_by_group: dict[str, list[int]],
                       fraction: float = TEST_FRACTION) -> set[str]:
    """Pick the test groups: about `fraction` of each label, both labels present.

    Groups are visited in hash order; a group joins test while it still helps a
    label that is short of its quota. Returns an empty set if no split with both
    labels on both sides exists (the caller reports it).
    """
    totals = {0: 0, 1: 0}
    counts: dict[str, dict[int, int]] = {}
    for g, labels in labels_by_group.items():
        c = {0: labels.count(0), 1: labels.count(1)}
        counts[g] = c
        totals[0] += c[0]
        totals[1] += c[1]
    quota = {k: max(1.0, fraction * v) for k, v in totals.items()}
    test: set[str] = set()
    got = {0: 0, 1: 0}
    for g in sorted(counts, key=lambda g: _order_key(concept, g)):
        c = counts[g]
        # join test if it moves some label closer to its quota (or gives it its first)
        helps = any(c[k] and (got[k] == 0 or abs(got[k] + c[k] - quota[k]) < abs(got[k] - quota[k]))
                    for k in (0, 1))
        # never starve training of a label
        keeps_train = all(got[k] + c[k] < totals[k] or totals[k] == 0 for k in (0, 1))
        if helps and keeps_train:
            test.add(g)
            got[0] += c[0]
            got[1] += c[1]
    if not (got[0] and got[1] and got[0] < totals[0] and got[1] < totals[1]):
        return set()
    return test


def labels_by_group(pairs: list[tuple[str, int]]) -> dict[str, list[int]]:
    """(group, label) pairs -> {group: [labels...]} keeping first-seen order."""
    out: dict[str, list[int]] = defaultdict(list)
    for g, lab in pairs:
        out[g].append(lab)
    return dict(out)
