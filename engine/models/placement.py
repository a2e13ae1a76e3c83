"""Models bigger than one device: accelerate's big-model inference, as `from_pretrained` kwargs.

`--device-map auto` lets accelerate place whole blocks on the GPUs, then the CPU, then
disk (weights memory-mapped from an offload folder and brought in block by block by its
`AlignDevicesHook`s). `--max-memory SIZE` caps every device at SIZE (or `0=20GiB,cpu=8GiB`
per device); whatever does not fit goes to disk. The engine's hooks see the same module
outputs either way, so scores equal those of an in-memory run.
"""
from __future__ import annotations

import shutil
import tempfile
import weakref
from dataclasses import dataclass

import torch
from neurolens.engine.models.adapters.base import ModelError

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclass(frozen=True)
class Placement:
    device_map: str
    max_memory: dict[int | str, int] | None   # bytes per device; None: what accelerate measures


def _bytes(text: str, what: str) -> int:
    from accelerate.utils import convert_file_size_to_int

    text = text.strip()
    try:
        n = int(text) if text.isdigit() else convert_file_size_to_int(text)
    except (ValueError, AttributeError):
        n = -1
    if not isinstance(n, int) or n <= 0:
        raise ModelError(f"--max-memory: {what} {text!r} is not a size (use e.g. 512MiB, 20GiB)")
    return n


def _devices(cpu_only: bool) -> list[int | str]:
    gpus = [] if cpu_only or not torch.cuda.is_available() else list(range(torch.cuda.device_count()))
    return [*gpus, "cpu"]


def parse_max_memory(text: str | None, *, cpu_only: bool = False) -> dict[int | str, int] | None:
    """`SIZE` (the same cap on every GPU and the CPU) or `dev=SIZE,...` (dev: N or cpu)."""
    if text is None or not text.strip():
        return None
    if "=" not in text:
        n = _bytes(text, "size")
        return {d: n for d in _devices(cpu_only)}
    out: dict[int | str, int] = {}
    known = _devices(cpu_only)
    for part in (p for p in text.split(",") if p.strip()):
        dev, _, size = part.partition("=")
        dev = dev.strip().lower().removeprefix("cuda:")
        key: int | str = int(dev) if dev.isdigit() else dev
        if key not in known:
            raise ModelError(f"--max-memory: unknown device {dev!r} (use {', '.join(map(str, known))})")
        out[key] = _bytes(size, f"size for {dev}")
    return out


def placement(device_map: str | None, max_memory: str | None, device: str | None) -> Placement | None:
    """The placement asked for on the command line; None for an ordinary single-device load.
    `--max-memory` alone implies `--device-map auto`; `--device cpu` keeps the map off the GPUs."""
    if device_map is None and max_memory is None:
        return None
    device_map = device_map or "auto"
    if device_map not in DEVICE_MAPS:
        raise ModelError(f"unknown --device-map {device_map!r}; choose from {', '.join(DEVICE_MAPS)}")
    cpu_only = device is not None and str(device).startswith("cpu")
    mem = parse_max_memory(max_memory, cpu_only=cpu_only)
    if mem is None and cpu_only:
        from accelerate.utils import get_max_memory

        mem = {"cpu": get_max_memory()["cpu"]}
    return Placement(device_map, mem)


def load_kwargs(p: Placement) -> dict:
    """`from_pretrained` kwargs for `p`, with a fresh offload folder for the disk part."""
    folder = tempfile.mkdtemp(prefix="neurolens-offload-")
    kw: dict = {"device_map": p.device_map, "offload_folder": folder}
    if p.max_memory is not None:
        kw["max_memory"] = dict(p.max_memory)
    return kw


def settle(model: torch.nn.Module, kwargs: dict) -> torch.device:
    """After loading: remove the offload folder with the model, and name the device its
    inputs go to (the first GPU in the map, else the CPU)."""
    folder = kwargs.get("offload_folder")
    if folder:
        weakref.finalize(model, shutil.rmtree, folder, True)
    hf_map = getattr(model, "hf_device_map", None) or {}
    for d in hf_map.values():
        if isinstance(d, int) or (isinstance(d, str) and d.startswith(("cuda", "xpu", "mps"))):
            return torch.device("cuda", d) if isinstance(d, int) else torch.device(d)
        if isinstance(d, torch.device) and d.type != "cpu":
            return d
    return torch.device("cpu")


def offloaded(model: torch.nn.Module) -> dict[str, int]:
    """How many top-level placements went where ({'cpu': 20, 'disk': 10}): for the run's log."""
    out: dict[str, int] = {}
    for d in (getattr(model, "hf_device_map", None) or {}).values():
        out[str(d)] = out.get(str(d), 0) + 1
    return out


def resident(mod: torch.nn.Module, name: str = "weight") -> torch.Tensor | None:
    """`mod`'s parameter `name` as a real tensor, also when accelerate has offloaded it
    (the module then holds a meta tensor between forwards, and its `AlignDevicesHook`
    keeps the real one in `weights_map`); None when it cannot be had."""
    t = getattr(mod, name, None)
    if not torch.is_tensor(t):
        return None
    if t.device.type != "meta":
        return t
    hook = getattr(mod, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        wm = getattr(h, "weights_map", None)
        if wm is None:
            continue
        try:
            real = wm[name]
        except KeyError:
            continue
        dev = getattr(h, "execution_device", None)
        return real.to(dev if dev is not None else "cpu")
    return None
