"""Custom probe files and image folders, with validation that speaks in one line.

Every way a user file can be wrong ends as a `ProbeError` naming the file (and
the line, where there is one); nothing else escapes `load_probe_file`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from PIL import Image

from .split import assign_test_groups, labels_by_group
from .types import Example, ProbeError, ProbeSet

MIN_PER_SIDE = 10
TEXT_KEYS = ("concept", "positive", "negative", "description")
VISION_KEYS = ("concept", "positive_dir", "negative_dir", "description")
ITEM_KEYS = ("text", "group", "target")
ROW_KEYS = ("text", "label", "group", "target")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_LABELS = {"1": 1, "0": 0, "positive": 1, "negative": 0, "pos": 1, "neg": 0}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


@dataclass
class _Item:
    """One parsed example before validation; `where` is a line number or a JSON path."""

    value: str  # text, or an image path
    label: int
    group: str | None
    target: str | None
    where: int | str | None


def _one_line(s: str) -> str:
    return " ".join(s.split())


def _fail(path: Path, msg: str, where: int | str | None = None) -> NoReturn:
    loc = f"{path}:{where}" if isinstance(where, int) else f"{path}"
    if isinstance(where, str):
        msg = f"{where}: {msg}"
    raise ProbeError(_one_line(f"{loc}: {msg}"))


def _snip(s: str, n: int = 40) -> str:
    return repr(s if len(s) <= n else s[:n] + "...")


def _check_str(path: Path, value: object, what: str, where: int | str | None) -> str:
    if not isinstance(value, str):
        _fail(path, f"{what} must be a string, got {type(value).__name__}", where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _fail(path, f"{what} is not valid Unicode (lone surrogate)", where)
    if not value.strip():
        _fail(path, f"{what} is empty", where)
    return value


def _check_target(path: Path, value: object, where: int | str | None) -> str | None:
    if value is None:
        return None
    t = _check_str(path, value, "target", where).strip()
    if len(t.split()) != 1:
        _fail(path, f"target must be a single word, got {_snip(t)}", where)
    return t


def _concept_from_name(stem: str) -> str:
    """A usable concept name from a file or folder name."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-")[:64]
    return name or "custom"


def _check_concept(path: Path, value: object) -> str:
    name = _check_str(path, value, "concept", None)
    if not _NAME.match(name):
        _fail(path, f"concept name {_snip(name)} must be 1-64 characters of letters, digits, '_', '.', '-'")
    return name


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ProbeError(f"{path}: probe file not found") from None
    except OSError as exc:
        raise ProbeError(_one_line(f"{path}: cannot read ({exc.strerror or exc})")) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        _fail(path, f"not valid UTF-8 (byte {exc.start}); save the file as UTF-8", line)


def _no_dup_keys(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            raise ProbeError(f"duplicate key {_snip(k)}")
        seen[k] = v
    return seen


def _parse_json(path: Path, text: str, line: int | None = None) -> object:
    """Parse JSON; `line` is the file line of a JSONL record (None for a whole file)."""
    try:
        return json.loads(text, object_pairs_hook=_no_dup_keys)
    except json.JSONDecodeError as exc:
        _fail(path, f"bad JSON: {exc.msg} (column {exc.colno})", exc.lineno if line is None else line)
    except ProbeError as exc:
        _fail(path, f"bad JSON: {exc}", line)
    except RecursionError:
        _fail(path, "bad JSON: nested too deeply", line)
    except ValueError as exc:  # e.g. integers too long to convert
        _fail(path, f"bad JSON: {exc}", line)


def _check_keys(path: Path, obj: dict, allowed: tuple[str, ...], where: int | str | None) -> None:
    unknown = [k for k in obj if k not in allowed]
    if unknown:
        _fail(path, f"unknown key {_snip(str(unknown[0]))}; allowed: {', '.join(allowed)}", where)


def _parse_label(path: Path, value: object, where: int | str | None) -> int:
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, bool) or not isinstance(key, (int, str)) or str(key) not in _LABELS:
        _fail(path, f"label must be 1/0 or positive/negative, got {repr(value)[:40]}", where)
    return _LABELS[str(key)]


def _json_items(path: Path, doc: dict) -> list[_Item]:
    items = []
    for side, label in (("positive", 1), ("negative", 0)):
        if side not in doc:
            _fail(path, f"missing key '{side}'")
        seq = doc[side]
        if not isinstance(seq, list):
            _fail(path, f"'{side}' must be a list, got {type(seq).__name__}")
        for i, raw in enumerate(seq):
            where = f"{side}[{i}]"
            if isinstance(raw, dict):
                _check_keys(path, raw, ITEM_KEYS, where)
                if "text" not in raw:
                    _fail(path, "missing key 'text'", where)
                text, group, target = raw["text"], raw.get("group"), raw.get("target")
            else:
                text, group, target = raw, None, None
            items.append(_Item(_check_str(path, text, "text", where), label,
                               None if group is None else _check_str(path, group, "group", where),
                               _check_target(path, target, where), where))
    return items


def _row_item(path: Path, row: dict, line: int) -> _Item:
    for key in ("text", "label"):
        if key not in row:
            _fail(path, f"missing key '{key}'", line)
    group, target = row.get("group"), row.get("target")
    return _Item(_check_str(path, row["text"], "text", line), _parse_label(path, row["label"], line),
                 None if group is None or group == "" else _check_str(path, group, "group", line),
                 None if target == "" else _check_target(path, target, line), line)


def _jsonl_items(path: Path, text: str) -> list[_Item]:
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        obj = _parse_json(path, line, n)
        if not isinstance(obj, dict):
            _fail(path, f"each line must be a JSON object, got {type(obj).__name__}", n)
        _check_keys(path, obj, ROW_KEYS, n)
        items.append(_row_item(path, obj, n))
    return items


def _csv_items(path: Path, text: str) -> list[_Item]:
    reader = csv.reader(io.StringIO(text, newline=""))
    items: list[_Item] = []
    header: list[str] | None = None
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [c.strip().lower() for c in row]
                _check_keys(path, dict.fromkeys(header), ROW_KEYS, reader.line_num)
                if len(set(header)) != len(header):
                    _fail(path, "duplicate column in header", reader.line_num)
                for key in ("text", "label"):
                    if key not in header:
                        _fail(path, f"header lacks a '{key}' column (want text,label[,group,target])",
                              reader.line_num)
                continue
            if len(row) != len(header):
                _fail(path, f"expected {len(header)} fields, got {len(row)}", reader.line_num)
            items.append(_row_item(path, dict(zip(header, row)), reader.line_num))
    except csv.Error as exc:
        _fail(path, f"bad CSV: {exc}", reader.line_num)
    if header is None:
        _fail(path, "empty CSV (want a header text,label[,group,target])")
    return items


def _check_counts(path: Path, items: list[_Item], noun: str) -> None:
    for label, side in ((1, "positive"), (0, "negative")):
        n = sum(it.label == label for it in items)
        if n == 0:
            _fail(path, f"no {side} examples")
        if n < MIN_PER_SIDE:
            _fail(path, f"only {n} {side} {noun}; need at least {MIN_PER_SIDE}")


def _check_duplicates(path: Path, items: list[_Item], key: dict[int, str]) -> None:
    """`key` maps item index to its identity (text, or image content hash)."""
    first: dict[str, _Item] = {}
    for i, it in enumerate(items):
        k = key[i]
        if k in first:
            prev = first[k]
            what = "both positive and negative" if prev.label != it.label else "twice"
            _fail(path, f"{_snip(it.value)} appears {what} (first at {prev.where})", it.where)
        first[k] = it


def _auto_groups(items: list[_Item], key: dict[int, str]) -> None:
    """An example without a group is a group of its own (DESIGN, Scores): nothing says which
    examples are correlated, so none are pooled. The name comes from the content hash, so the
    by-group split stays deterministic and independent of the order of the file."""
    for i, it in enumerate(items):
        if it.group is None:
            it.group = "auto-" + hashlib.sha1(key[i].encode()).hexdigest()[:12]


def _finish(path: Path, concept: str, modality: str, items: list[_Item], key: dict[int, str],
            description: str) -> ProbeSet:
    _check_duplicates(path, items, key)
    _auto_groups(items, key)
    test = assign_test_groups(concept, labels_by_group([(it.group, it.label) for it in items]))
    if not test:
        _fail(path, "cannot split by group with both labels in train and test; "
                    "give each label at least two groups (or leave groups out)")
    examples = [
        Example(example_id=i, label=it.label, group=it.group, split="test" if it.group in test else "train",
                text=it.value if modality == "text" else None,
                image=it.value if modality == "vision" else None, target=it.target)
        for i, it in enumerate(items)
    ]
    return ProbeSet(concept=concept, modality=modality, examples=examples, source=str(path),
                    description=description or f"custom probes from {path.name}")


def _text_set(path: Path, concept: str, items: list[_Item], description: str = "") -> ProbeSet:
    _check_counts(path, items, "examples")
    return _finish(path, concept, "text", items, {i: it.value for i, it in enumerate(items)}, description)


def _list_images(root: Path, side: str, label: int) -> list[_Item]:
    if not root.is_dir():
        raise ProbeError(_one_line(f"{root}: {side} image folder not found"))
    items = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if p.suffix.lower() not in IMAGE_EXTS:
            continue
        group = rel.parts[0] if len(rel.parts) > 1 else None
        items.append(_Item(str(p.resolve()), label, group, None, None))
    return items


def _image_digest(p: str) -> str:
    """Read and verify one image; its content hash catches the same picture on both sides."""
    try:
        data = Path(p).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except Exception as exc:  # PIL raises many types for corrupt files
        raise ProbeError(_one_line(f"{p}: unreadable image ({exc or type(exc).__name__})")) from None
    return hashlib.sha1(data).hexdigest()


def _vision_set(path: Path, concept: str, pos_dir: Path, neg_dir: Path, description: str = "") -> ProbeSet:
    items = _list_images(pos_dir, "positive", 1) + _list_images(neg_dir, "negative", 0)
    _check_counts(path, items, "images")
    key = {i: _image_digest(it.value) for i, it in enumerate(items)}
    return _finish(path, concept, "vision", items, key, description)


def _from_json(path: Path, text: str) -> ProbeSet:
    doc = _parse_json(path, text)
    if not isinstance(doc, dict):
        _fail(path, f"top level must be a JSON object with keys {', '.join(TEXT_KEYS)}; "
                    f"got {type(doc).__name__}")
    vision = "positive_dir" in doc or "negative_dir" in doc
    _check_keys(path, doc, VISION_KEYS if vision else TEXT_KEYS, None)
    concept = _check_concept(path, doc["concept"]) if "concept" in doc else _concept_from_name(path.stem)
    description = doc.get("description") or ""
    if not isinstance(description, str):
        _fail(path, f"description must be a string, got {type(description).__name__}")
    if not vision:
        return _text_set(path, concept, _json_items(path, doc), description)
    dirs = []
    for key in ("positive_dir", "negative_dir"):
        if key not in doc:
            _fail(path, f"missing key '{key}'")
        dirs.append(path.parent / _check_str(path, doc[key], key, None))
    return _vision_set(path, concept, dirs[0], dirs[1], description)


def _load(path: Path) -> ProbeSet:
    if path.is_dir():
        return _vision_set(path, _concept_from_name(path.resolve().name),
                           path / "positive", path / "negative")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl", ".csv"):
        if not path.exists():
            raise ProbeError(f"{path}: probe file not found")
        _fail(path, "unsupported probe file type; use .json, .jsonl, .csv or an image folder")
    text = _read_text(path)
    if suffix == ".json":
        return _from_json(path, text)
    items = _jsonl_items(path, text) if suffix == ".jsonl" else _csv_items(path, text)
    return _text_set(path, _concept_from_name(path.stem), items)


def load_probe_file(path: str | Path) -> ProbeSet:
    """Load a custom probe file or image folder; any problem is a one-line ProbeError."""
    try:
        p = Path(path)
    except TypeError:
        raise ProbeError(f"probe path must be a string, got {type(path).__name__}") from None
    try:
        return _load(p)
    except ProbeError as exc:
        raise ProbeError(_one_line(str(exc))) from None
    except RecursionError:
        raise ProbeError(f"{p}: probe file is nested too deeply") from None
    except Exception as exc:  # last resort: the user sees one line, never a traceback
        raise ProbeError(_one_line(f"{p}: cannot load probes ({type(exc).__name__}: {exc})")) from None
