"""Where a sweep's pairs and a corpus scan's shards run: in this process (the default), or
over a Ray cluster.

The Ray executor keeps one actor per model, so a model is loaded once for all its concepts;
each pair is one task (a method call) on that actor. A worker that dies mid-pair (a lost
node, `kill -9`) is restarted by Ray and the pair retried: the stages the dead attempt
committed are reused from the store and the rest redone, so the tables equal an
undisturbed run's. Progress and the summary table stay in the driver.

A corpus scan on Ray is one task per pending shard: the worker process loads the model as
the driver did (kept for its next shard), computes the shard's states with the driver's
calibration edges and returns them; the driver saves each shard's file and merges them in
shard order, exactly as the in-process scan does.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from neurolens.errors import ConfigError, NeuroLensError, first_line

EXECUTORS = ("inprocess", "ray")
#: environment a worker needs to reach the store and the models the driver sees
_FORWARD = ("AWS_", "GOOGLE_", "NEUROLENS_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")


def check_executor(name: str) -> str:
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r} (--executor); choose from {', '.join(EXECUTORS)}")
    return name


def _reachable(address: str) -> None:
    """A Ray address that does not answer fails in seconds, in one line."""
    if ":" not in address:   # "auto": the cluster this machine's `ray start` wrote down
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
            pass
    except (OSError, ValueError):
        raise ConfigError(f"the Ray cluster at {address} does not answer (--address)") from None


def _loopback_only() -> None:
    """On Linux Ray maps a node address of 127.0.0.1 to the machine's reachable one, and a new
    local cluster then listens on every interface; the switch Ray itself uses on macOS and
    Windows (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) keeps it on loopback. Ray reads that variable
    when it is imported, so the constant it sets is set here (a private name: where a Ray
    version lacks it, the cluster starts as Ray decides)."""
    try:
        from ray._private import ray_constants
    except ImportError:
        return
    if hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or the one this process already joined), else start a
    local one. Only this process's variables that a worker needs are forwarded."""
    import ray

    if ray.is_initialized():
        return
    env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARD)}
    kw: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                          "include_dashboard": False, "configure_logging": False}
    if address:
        _reachable(address)
        kw["address"] = address
        if address.rpartition(":")[0] in ("127.0.0.1", "localhost"):
            _loopback_only()      # a cluster on loopback: this driver's node is 127.0.0.1 too
            kw["_node_ip_address"] = "127.0.0.1"
    else:
        kw.update(num_cpus=num_cpus or os.cpu_count(), _node_ip_address="127.0.0.1")  # a local cluster: loopback only
        _loopback_only()
        # Ray starts workers at niceness 15, so a sweep on a local cluster yields its cores to
        # anything else the machine runs; the in-process executor runs at this process's
        # priority, and so do the workers of a cluster we start (as Ray's job server does)
        os.environ.setdefault("RAY_worker_niceness", str(os.nice(0)))
    try:
        ray.init(**kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"cannot join the Ray cluster at {address or 'local'}: {first_line(e)}") from None


def _worker_class():
    import ray

    @ray.remote(max_restarts=3, max_task_retries=3)
    class PairWorker:
        """One model, loaded on first use (again after a restart), for all its concepts."""

        def __init__(self, model: str, load: dict[str, Any], threads: int):
            import torch

            torch.set_num_threads(max(1, threads))
            self.model, self.load, self.adapter = model, load, None
            self.error: str | None = None

        def ready(self) -> str | None:
            from neurolens.engine.models import registry

            if self.adapter is None and self.error is None:
                try:
                    self.adapter = registry.load(self.model, **self.load)
                except NeuroLensError as e:
                    self.error = f"cannot load: {first_line(e)}"
            return self.error

        def modality(self) -> str:
            return self.adapter.modality

        def name(self) -> str:
            return self.adapter.name

        def run_pair(self, concept: str, cfg: Any):
            from neurolens.progress import Bars
            from neurolens.sweeps import run_pair
            from neurolens.store import StoreError

            if self.ready():
                raise NeuroLensError(self.error)
            try:
                return run_pair(self.adapter, concept, cfg, Bars(enabled=False))
            except StoreError as e:   # crosses the process boundary as a plain message
                return ("store-error", first_line(e)), None

    return PairWorker


def run_pairs_ray(models: Sequence[str], concepts: Sequence[str], modality_of: dict[str, str],
                  config_for: Callable[[str, str], Any], bars: Any, done: list, *, dtype: str = "float32",
                  device: str | None = None, device_map: str | None = None, max_memory: str | None = None,
                  out: Any = None, findings: list | None = None, address: str | None = None) -> None:
    """`run_pairs` over Ray: the same outcomes, appended in the same order."""
    import ray
    import torch

    from neurolens.store import StoreError
    from neurolens.sweeps import Outcome, relabel

    init_ray(address)
    gpu = 1 if (device or "").startswith("cuda") else 0
    threads = torch.get_num_threads()
    # the driver's thread count, so a worker's fp32 reductions run in the same order as in-process
    env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARD)}
    env.update({v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")})
    Worker = _worker_class().options(num_gpus=gpu, num_cpus=1 if not gpu else 0,
                                     runtime_env={"env_vars": env})
    load = {"device": device, "dtype": dtype, "device_map": device_map, "max_memory": max_memory}
    with bars.stage("sweep", len(models) * len(concepts)) as overall:
        actors = {m: Worker.remote(m, load, threads) for m in models}
        per_model: dict[str, list] = {}
        pending: dict[Any, tuple[str, str]] = {}
        names: dict[str, str] = {}
        for m, a in actors.items():
            err = ray.get(a.ready.remote())
            if err:
                per_model[m] = [Outcome(m, "*", "failed", err)]
                overall(len(concepts))
                ray.kill(a)
                continue
            names[m], modality = ray.get([a.name.remote(), a.modality.remote()])
            todo = [c for c in concepts if modality_of[c] == modality]
            other = [c for c in concepts if c not in todo]
            per_model[m] = []
            if other:
                per_model[m].append(Outcome(names[m], ", ".join(other), "skipped",
                                            f"{modality_of[other[0]]} concepts; {names[m]} is a "
                                            f"{modality} model"))
                overall(len(other))
            for c in todo:
                pending[a.run_pair.remote(c, config_for(m, c))] = (m, c)
        results: dict[tuple[str, str], tuple] = {}
        left = {m: sum(1 for v in pending.values() if v[0] == m) for m in models}
        stop: StoreError | None = None
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            m, c = pending.pop(ready[0])
            try:
                results[m, c] = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - retries spent: the pair failed, the sweep goes on
                results[m, c] = (Outcome(names.get(m, m), c, "failed", f"worker lost: {first_line(e)}"), None)
            if isinstance(results[m, c][0], tuple):
                stop = stop or StoreError(results[m, c][0][1])
                results[m, c] = (Outcome(names.get(m, m), c, "failed", results[m, c][0][1]), None)
            overall(1)
            left[m] -= 1
            if left[m] == 0:
                ray.kill(actors[m])   # free its slot (and GPU) for the next model
        for m in models:
            done.extend(per_model.get(m, []))
            for c in concepts:
                if (m, c) in results:
                    o, f = results[m, c]
                    done.append(o)
                    if f is not None and findings is not None:
                        findings.append(f)
            if stop is None and any(o.model == names.get(m) and o.status != "failed" for o in done):
                relabel(names[m], out, done)
        if stop is not None:
            raise stop


# -- corpus scans: one task per shard -----------------------------------------------------
_LOADED: dict[tuple, tuple[Any, tuple[str, str]]] = {}   # in a worker process: its last model


def _identity(adapter: Any) -> tuple[str, str]:
    """What a shard's numbers depend on besides its input: the weights and the kernels
    (with the thread count) the model computes with."""
    import json

    from neurolens.engine.runtime.extract import model_sha
    from neurolens.engine.runtime.fast import choices

    return model_sha(adapter), json.dumps(choices(adapter.model), sort_keys=True)


def _differs(got: tuple[str, str], want: tuple[str, str]) -> str:
    import json

    if got[0] != want[0]:
        return f"with other weights (model sha {got[0]}, here {want[0]})"
    a, b = json.loads(got[1]), json.loads(want[1])
    return "with other kernels (" + ", ".join(f"{k} {a.get(k)} there, {b.get(k)} here"
                                              for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)) + ")"


def _scan_shard(ref: str, load: dict[str, Any], threads: int, ex: Any, layers: list[int], edges: dict,
                settings: Any, index: Any) -> tuple:
    """On a worker: one shard's states, computed by `scan_states` as the in-process scan does,
    on the model loaded as the driver loaded it (once per worker process)."""
    import torch

    from neurolens.engine.models import registry
    from neurolens.engine.runtime.scan import scan_states

    torch.set_num_threads(max(1, threads))
    key = (ref, tuple(sorted(load.items())))
    try:
        if key not in _LOADED:
            _LOADED.clear()
            adapter = registry.load(ref, **load)
            _LOADED[key] = adapter, _identity(adapter)
        adapter, ident = _LOADED[key]
        states = scan_states(adapter, ex, layers, edges, settings, index)
    except NeuroLensError as e:   # crosses the process boundary as a plain message
        return "error", first_line(e)
    return ident, {l: st.state_dict() for l, st in states.items()}


def scan_shards_ray(adapter: Any, address: str | None = None) -> Callable[..., Any]:
    """A shard runner for `run_scan` over the Ray cluster at `address` (default: a local one):
    every pending shard one task, each on `adapter`'s device kind and dtype and with this
    process's thread count, so the workers' fp32 sums run as they would here."""
    import ray
    import torch

    from neurolens.errors import ModelError

    if getattr(adapter.model, "hf_device_map", None):
        raise ConfigError(f"{adapter.name} is spread over devices by a device map: a scan on Ray "
                          "loads the model whole on each worker (use --executor inprocess)")
    init_ray(address)
    gpu = adapter.device.type == "cuda"
    threads = torch.get_num_threads()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if gpu and not any(r.get("GPU", 0) >= 1 for r in nodes):
        raise ConfigError(f"the Ray cluster at {address or 'local'} has no GPU for a scan on {adapter.device}")
    cpus = 0 if gpu else max(1, min(threads, int(max((r.get("CPU", 1) for r in nodes), default=1))))
    env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARD)}
    env.update({v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")})
    task = ray.remote(_scan_shard).options(num_cpus=cpus, num_gpus=1 if gpu else 0, max_retries=3,
                                           runtime_env={"env_vars": env})
    load = {"device": "cuda" if gpu else "cpu", "dtype": str(adapter.dtype).removeprefix("torch.")}
    want = _identity(adapter)

    def run(ex: Any, layers: list[int], edges: dict, s: Any, shards: list, progress: Any):
        ex_ref = ray.put(ex)
        edges_ref = ray.put({l: tuple(t.cpu() for t in e) for l, e in edges.items()})
        refs = {task.remote(adapter.ref, load, threads, ex_ref, layers, edges_ref, s, idx): (i, idx)
                for i, idx in shards}
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                i, idx = refs.pop(ready[0])
                try:
                    ident, states = ray.get(ready[0])
                except ray.exceptions.RayTaskError:
                    raise   # a bug: its traceback
                except ray.exceptions.RayError as e:   # retries spent: the saved shards stay
                    raise NeuroLensError(f"shard {i} of the scan failed on Ray ({first_line(e)}); the "
                                         "shards finished are saved: run the same command to resume") from None
                if ident == "error":
                    raise ModelError(f"on a Ray worker: {states}")
                if ident != want:
                    raise ConfigError(f"a Ray worker computes {adapter.name} {_differs(ident, want)} than this "
                                      "process: its shards would not equal an in-process scan")
                if progress:
                    progress(int(ex.lengths[idx].sum()))
                yield i, states
        finally:
            for r in refs:
                ray.cancel(r)

    return run


__all__ = ["EXECUTORS", "check_executor", "init_ray", "run_pairs_ray", "scan_shards_ray"]
