"""Probes from Python lists: the same shape and the same checks as a probe file.

    {"concept": "royalty", "positive": [...], "negative": [...]}, items a string or
    {"text": ..., "group": ..., "target": ...}
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .custom import _check_concept, _json_items, _one_line, _text_set
from .types import ProbeError, ProbeSet


def probes_from_lists(positive: Sequence[Any], negative: Sequence[Any], *, concept: str = "custom",
                      description: str = "") -> ProbeSet:
    """A text probe set from in-memory examples, validated like a probe file (counts, duplicates,
    item keys, groups for the group-wise split); any problem is one ProbeError line."""
    where = Path(f"Probes({concept!r})" if isinstance(concept, str) else "Probes")
    if not isinstance(positive, (list, tuple)) or not isinstance(negative, (list, tuple)):
        raise ProbeError(f"{where}: positive and negative must be lists of strings or "
                         "{'text', 'group', 'target'} dicts")
    if not isinstance(description, str):
        raise ProbeError(f"{where}: description must be a string, got {type(description).__name__}")
    try:
        name = _check_concept(where, concept)
        items = _json_items(where, {"positive": list(positive), "negative": list(negative)})
        ps = _text_set(where, name, items, description or f"custom probes ({len(items)} examples)")
    except ProbeError as exc:
        raise ProbeError(_one_line(str(exc))) from None
    ps.source = "python"
    return ps


__all__ = ["probes_from_lists"]
