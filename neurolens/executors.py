"""Where a sweep's pairs run: in this process (the default), or over a Ray cluster.

The Ray executor keeps one actor per model, so a model is loaded once for all its concepts;
each pair is one task (a method call) on that actor. A worker that dies mid-pair (a lost
node, `kill -9`) is restarted by Ray and the pair retried: the stages the dead attempt
committed are reused from the store and the rest redone, so the tables equal an
undisturbed run's. Progress and the summary table stay in the driver.
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
    else:
        kw.update(num_cpus=num_cpus or os.cpu_count(), _node_ip_address="127.0.0.1")  # a local cluster: loopback only
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


__all__ = ["EXECUTORS", "check_executor", "init_ray", "run_pairs_ray"]
