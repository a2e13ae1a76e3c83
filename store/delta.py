"""The store as Delta tables, on a local path or on object storage (s3://, gs://).

Same API as the Parquet store (`Store`), so every stage writes through it unchanged; what
differs is what makes a partition finished. Here it is a commit in the table's log, never a
folder rename (a rename on S3 is a copy, and two writers can overwrite each other):

- a stage's files are uploaded under the partition's folder with a fresh tag, next to a
  marker object `_nl-<tag>.json` (key, run id, extras); neither is visible to any reader
  until the commit that adds the files lands;
- the commit replaces the partition (an overwrite filtered on its keys) and carries the
  application transaction `neurolens:<partition>` with the next version. A writer whose
  snapshot is stale conflicts on that transaction (delta-rs' optimistic concurrency: no lock
  service), reloads, and either finds the same work already committed (it drops its files:
  a task that ran twice writes its rows once) or commits on top;
- a partition's marker is the marker of the files its latest commit added.

Local staging and liveness locks stay on the local disk (`root`), as for the Parquet store.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.fs as pfs
import pyarrow.parquet as pq

from neurolens.errors import StoreError, first_line

from .layout import Store, _held, check_name
from .schema import PARTITIONS, SCHEMAS

REMOTE_SCHEMES = ("s3://", "s3a://", "gs://", "gcs://")
MARKER_PREFIX = "_nl-"
FORMAT_ENV = "NEUROLENS_STORE_FORMAT"


#: Delta tables on object storage this process has opened, by (URI, who sees it: `_identity`):
#: a later Store on the same URI brings one up to date with a listing of the commits since
#: (`update_incremental`) instead of reading its log again, a handful of requests fewer on
#: every query of a notebook or server
_OPENED: dict[tuple, object] = {}

#: object storage clients by (scheme, `_identity`): a client keeps its connections open, so a
#: later query reuses them instead of connecting again
_CLIENTS: dict[tuple, pfs.FileSystem] = {}

#: Parquet fragments of Delta data files, by (`_identity`, path, size), least recently used
#: last. A Delta data file is never rewritten in place (a new version adds a new file, named
#: by a UUID), so its footer, which a fragment keeps once it has been scanned, stays true: a later query
#: reads only the column chunks it needs, not the footer again (one request fewer per file
#: on object storage)
_FRAGMENTS: OrderedDict[tuple, pds.Fragment] = OrderedDict()
_FRAGMENTS_LOCK = threading.Lock()

#: (bucket, `_identity`) pairs whose bucket this process has found reachable and present
_BUCKETS_SEEN: set[tuple] = set()
FRAGMENT_CACHE = 50_000

#: a checkpoint every 10 commits (delta-rs's default is 100): opening a table reads its last
#: checkpoint and at most 9 commits after it, not every partition's commit since the start,
#: which on object storage is one request each on every query
TABLE_PROPERTIES = {"delta.checkpointInterval": "10"}


def is_remote(root: object) -> bool:
    return isinstance(root, str) and root.startswith(REMOTE_SCHEMES)


def is_delta_root(root: object) -> bool:
    """Whether `root` names a Delta store: an object-store URI, a local store whose runs
    table has a Delta log, or a new local store while $NEUROLENS_STORE_FORMAT=delta."""
    if is_remote(root):
        return True
    p = Path(root)  # type: ignore[arg-type]
    if (p / "runs" / "_delta_log").is_dir():
        return True
    if os.environ.get(FORMAT_ENV, "parquet").lower() == "delta":
        return not any(p.glob("*/**/*.parquet")) if p.is_dir() else True
    return False


def table_schema(table: str) -> pa.Schema:
    """The table's Delta schema: its columns, then its partition keys. Delta has no float16
    nor fixed-size lists: `activations.acts` is declared list<float> and read as stored."""
    if table == "activations":
        base = pa.schema([("example_id", pa.int32()), ("acts", pa.list_(pa.float32())),
                          ("run_id", pa.string())])
    else:
        base = SCHEMAS[table]
    for k in PARTITIONS[table]:
        base = base.append(pa.field(k, pa.int32() if k == "layer" else pa.string()))
    return base


def _s3_filesystem() -> pfs.FileSystem:
    """pyarrow's S3 client from the usual AWS variables; fails fast on a dead endpoint."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    kw: dict = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                "connect_timeout": 3, "request_timeout": 30,
                "retry_strategy": pfs.AwsStandardS3RetryStrategy(max_attempts=2)}
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kw.update(access_key=os.environ["AWS_ACCESS_KEY_ID"],
                  secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                  session_token=os.environ.get("AWS_SESSION_TOKEN"))
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kw.update(endpoint_override=host.rstrip("/") or scheme, scheme=scheme if host else "https")
    return pfs.S3FileSystem(**kw)


def _identity() -> tuple:
    """Who a remote store is seen as: the endpoint, region and credentials in the environment
    (the secret as a digest) and the client options. Two stores are the same table only if
    these agree: another key may see another bucket's contents, or none."""
    env = os.environ
    secret = hashlib.sha256((env.get("AWS_SECRET_ACCESS_KEY", "") + "\0"
                             + env.get("AWS_SESSION_TOKEN", "")).encode()).hexdigest()[:16]
    return (env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3") or "",
            env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "",
            env.get("AWS_ACCESS_KEY_ID", ""), secret, tuple(sorted(storage_options().items())))


def storage_options() -> dict[str, str]:
    """delta-rs reads the AWS variables itself; these bound how long a dead endpoint blocks."""
    opts = {"timeout": "30s", "connect_timeout": "3s", "max_retries": "2", "retry_timeout": "10s"}
    if os.environ.get("AWS_ALLOW_HTTP", "").lower() in ("1", "true", "yes"):
        opts["allow_http"] = "true"
    return opts


class DeltaStore(Store):
    """Every table of the store a Delta table under `uri` (a local folder or s3://bucket/prefix)."""

    def __init__(self, root: str | os.PathLike[str]):
        if isinstance(root, Store):
            root = root.uri
        self.remote = is_remote(root)
        if self.remote:
            self.uri = str(root).rstrip("/")
            scheme, _, rest = self.uri.partition("://")
            self.scheme = "s3" if scheme in ("s3", "s3a") else "gs"
            self.base = rest
            self.bucket = rest.split("/", 1)[0]
            h = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
            self.root = Path(tempfile.gettempdir()) / "neurolens-stores" / h  # staging and locks only
            self._fs: pfs.FileSystem | None = None
        else:
            self.root = Path(root).expanduser().resolve()
            self.uri = str(self.root)
            self.base = self.uri
            self._fs = pfs.LocalFileSystem()
        self._tables: dict[str, object] = {}
        self._present: set[str] | None = None

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def fs(self) -> pfs.FileSystem:
        if self._fs is None:
            key = (self.scheme, _identity())
            if key not in _CLIENTS:
                _CLIENTS[key] = _s3_filesystem() if self.scheme == "s3" else pfs.GcsFileSystem()
            self._fs = _CLIENTS[key]
        return self._fs

    def _uri(self, table: str) -> str:
        return f"{self.uri}/{table}"

    def _path(self, table: str, rel: str = "") -> str:
        return f"{self.base}/{table}" + (f"/{rel}" if rel else "")

    def _fail(self, e: BaseException, what: str) -> StoreError:
        msg = first_line(e)
        low = str(e).lower()
        if any(w in low for w in ("403", "forbidden", "privileges", "signature", "access denied",
                                  "access_denied", "accessdenied", "invalidaccesskeyid")):
            why = "access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        elif "nosuchbucket" in low or "bucket" in low and any(
                w in low for w in ("not found", "not exist", "404")):
            why = f"bucket {self.bucket!r} does not exist"
        elif "connect" in low or "timed out" in low or "timeout" in low or "dns" in low or "resolve" in low:
            why = f"cannot reach the endpoint {os.environ.get('AWS_ENDPOINT_URL', '(AWS default)')}"
        else:
            why = msg
        return StoreError(f"cannot {what} the store at {self.uri}: {why}")

    def ensure(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "_staging").mkdir(exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot write to the store at {self.root}: {e.strerror or e}") from None
        if self.remote:
            self._check_bucket()
        self._table("runs")

    def _check_bucket(self) -> None:
        try:
            info = self.fs.get_file_info(self.bucket)
        except (OSError, pa.ArrowException) as e:
            raise self._fail(e, "open") from None
        if info.type == pfs.FileType.NotFound:
            raise StoreError(f"cannot open the store at {self.uri}: bucket {self.bucket!r} does not exist")

    def exists(self) -> bool:
        if not self.remote:
            return self._table("runs", create=False) is not None
        # a wrong key, a dead endpoint or no bucket: say which, the first time this process
        # sees the bucket with these credentials (a later failure still surfaces below)
        if (self.bucket, _identity()) not in _BUCKETS_SEEN:
            self._check_bucket()
            _BUCKETS_SEEN.add((self.bucket, _identity()))
        # the store's tables in one listing: opening the runs log (a DeltaTable) costs a
        # dozen milliseconds more per query on object storage, for a table most queries skip
        return "runs" in self.tables_present()

    def tables_present(self) -> set[str]:
        """The tables the store holds, from one listing of its root (on object storage a
        query skips opening a table that is not there: a failed open is several requests).
        Listed once per Store object: a query's view of which tables exist."""
        if self._present is None:
            if not self.remote:
                return {t for t in PARTITIONS if self._table(t, create=False) is not None}
            try:
                infos = self.fs.get_file_info(pfs.FileSelector(self.base, allow_not_found=True))
            except (OSError, pa.ArrowException) as e:
                raise self._fail(e, "open") from None
            self._present = {i.base_name for i in infos
                             if i.type == pfs.FileType.Directory and i.base_name in PARTITIONS}
        return set(self._present)

    def _table(self, table: str, *, create: bool = True, fresh: bool = False):
        """The table's DeltaTable (created on first write); None when absent and not created."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        if table not in PARTITIONS:
            raise StoreError(f"unknown table {table!r}")
        dt = self._tables.get(table)
        try:
            if dt is not None:
                if fresh:
                    dt.update_incremental()
                return dt
            dt = _OPENED.get(self._opened_key(table))
            if dt is not None:   # opened before in this process: read only the commits since
                dt.update_incremental()
                self._tables[table] = dt
                return dt
            try:
                dt = DeltaTable(self._uri(table), storage_options=storage_options())
            except TableNotFoundError:
                if not create:
                    return None
                with contextlib.suppress(Exception):  # a concurrent creator won: load its table
                    DeltaTable.create(self._uri(table), schema=table_schema(table),
                                      partition_by=list(PARTITIONS[table]) or None, mode="ignore",
                                      configuration=TABLE_PROPERTIES, storage_options=storage_options())
                dt = DeltaTable(self._uri(table), storage_options=storage_options())
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - delta-rs raises OSError/DeltaError for I/O
            raise self._fail(e, "open") from None
        self._tables[table] = dt
        if self.remote:
            _OPENED[self._opened_key(table)] = dt
        return dt

    def _opened_key(self, table: str) -> tuple:
        """A table is the same only at the same endpoint, seen with the same credentials."""
        return (self._uri(table), _identity())

    def _files(self, table: str, parts: Mapping[str, object] | None = None, *, fresh: bool = True) -> list[dict]:
        """The live files of `table` (optionally one partition): [{path, parts..., num_records}]."""
        dt = self._table(table, create=False, fresh=fresh)
        if dt is None:
            return []
        t = pa.table(dt.get_add_actions(flatten=True))
        keys = PARTITIONS[table]
        out = []
        cols = {k: t.column(f"partition.{k}").to_pylist() for k in keys}
        paths = t.column("path").to_pylist()
        sizes = t.column("size_bytes").to_pylist() if "size_bytes" in t.column_names else [None] * len(paths)
        for i, p in enumerate(paths):
            row = {"path": p, "size": sizes[i], **{k: cols[k][i] for k in keys}}
            if parts and any(str(row[k]) != str(parts[k]) for k in parts):
                continue
            out.append(row)
        return out

    def _ppath(self, table: str, parts: Mapping[str, object]) -> str:
        keys = PARTITIONS[table]
        if set(parts) != set(keys):
            raise StoreError(f"table {table} is partitioned by {keys}, got {tuple(parts)}")
        return "/".join(f"{k}={check_name(k, str(parts[k]))}" for k in keys)

    # -- the Parquet store's API -------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        raise StoreError("a Delta store has no table folders; use its files (Store.partitions)")

    def partition_dir(self, table: str, parts: Mapping[str, object]) -> Path:
        raise StoreError("a Delta store has no partition folders; read it through read_table")

    def partitions(self, table: str, **fixed: object) -> list[dict[str, str]]:
        seen: dict[tuple, dict[str, str]] = {}
        for f in self._files(table, fixed or None):
            key = tuple(str(f[k]) for k in PARTITIONS[table])
            seen.setdefault(key, {k: str(f[k]) for k in PARTITIONS[table]})
        return [seen[k] for k in sorted(seen)]

    def marker(self, table: str, parts: Mapping[str, object]) -> dict | None:
        self._ppath(table, parts)
        files = self._files(table, parts)
        if not files:
            return None
        tag = Path(files[0]["path"]).name.split("-")[1]
        rel = f"{Path(files[0]['path']).parent.as_posix()}/{MARKER_PREFIX}{tag}.json"
        try:
            with self.fs.open_input_stream(self._path(table, rel)) as fh:
                return json.loads(fh.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise self._fail(e, "read") from None

    def is_complete(self, table: str, parts: Mapping[str, object], key: str) -> bool:
        m = self.marker(table, parts)
        return bool(m) and m.get("key") == key

    def lock(self):  # type: ignore[override]
        raise StoreError("a Delta store commits through its log; it takes no store lock")

    def publish(self, table: str, parts: Mapping[str, object], staged: Path, *, key: str, run_id: str,
                extra: Mapping[str, object] | None = None) -> str:
        """Upload the staged files, then commit them as the partition (see the module's note)."""
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import AddAction, CommitProperties, Transaction

        ppath = self._ppath(table, parts)
        self._table(table)
        files = sorted(Path(staged).glob("*.parquet"))
        tag = uuid.uuid4().hex
        meta = {"key": key, "run_id": run_id, "files": [f.name for f in files], **(extra or {})}
        values = {k: str(parts[k]) for k in PARTITIONS[table]}
        adds, written = [], []
        try:
            if not self.remote:
                os.makedirs(self._path(table, ppath), exist_ok=True)
            for i, f in enumerate(files):
                rel = f"{ppath}/part-{tag}-{i:03d}.parquet"
                pfs.copy_files(str(f), self._path(table, rel), source_filesystem=pfs.LocalFileSystem(),
                               destination_filesystem=self.fs)
                written.append(rel)
                n = pq.read_metadata(f).num_rows
                adds.append(AddAction(rel, f.stat().st_size, values, int(time.time() * 1000), True,
                                      json.dumps({"numRecords": n})))
            mrel = f"{ppath}/{MARKER_PREFIX}{tag}.json"
            with self.fs.open_output_stream(self._path(table, mrel)) as fh:
                fh.write(json.dumps(meta).encode())
            written.append(mrel)
        except (OSError, pa.ArrowException) as e:
            self._remove(table, written)
            raise self._fail(e, "write to") from None
        app = f"neurolens:{table}/{ppath}"
        filters = [(k, "=", v) for k, v in values.items()]
        for attempt in range(50):
            dt = self._table(table, fresh=True)
            if self.is_complete(table, parts, key):
                self._remove(table, written)   # the same work is committed: keep it, write nothing
                return ppath
            version = (dt.transaction_version(app) or 0) + 1
            props = CommitProperties(app_transactions=[Transaction(app, version)],
                                     custom_metadata={"neurolens.partition": ppath, "neurolens.key": key,
                                                      "neurolens.run_id": run_id})
            try:
                dt.create_write_transaction(adds, "overwrite", table_schema(table),
                                            list(PARTITIONS[table]) or None, filters or None,
                                            commit_properties=props)
                return ppath
            except CommitFailedError:
                time.sleep(random.uniform(0.01, 0.05) * (1 + attempt))   # stale snapshot: reload, retry
            except Exception as e:  # noqa: BLE001
                self._remove(table, written)
                raise self._fail(e, "commit to") from None
        self._remove(table, written)
        raise StoreError(f"cannot commit {table} {ppath} to {self.uri}: too many concurrent writers")

    def _remove(self, table: str, rels: list[str]) -> None:
        for r in rels:
            with contextlib.suppress(OSError, pa.ArrowException):
                self.fs.delete_file(self._path(table, r))

    def write_partition(self, table: str, parts: Mapping[str, object], data: pa.Table, *, key: str,
                        run_id: str, extra: Mapping[str, object] | None = None) -> str:
        import shutil

        from .layout import write_parquet

        staged = self.staging()
        try:
            write_parquet(data, staged / f"part-{run_id}.parquet")
            return self.publish(table, parts, staged, key=key, run_id=run_id, extra=extra)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def drop_partition(self, table: str, parts: Mapping[str, object]) -> None:
        values = {k: str(parts[k]) for k in PARTITIONS[table]}
        self._ppath(table, parts)
        dt = self._table(table, fresh=True)
        try:
            dt.delete(" AND ".join(f"{k} = '{v}'" if k != "layer" else f"{k} = {int(v)}"
                                   for k, v in values.items()))
        except Exception as e:  # noqa: BLE001
            raise self._fail(e, "write to") from None

    # -- reading ---------------------------------------------------------------------------------
    def read_partition(self, table: str, parts: Mapping[str, object]) -> pa.Table:
        files = self._files(table, parts) if parts else self._files(table)
        if not files:
            what = ", ".join(f"{k}={v}" for k, v in parts.items()) if parts else "the store"
            raise StoreError(f"no {table} stored for {what}")
        try:
            tabs = []
            for f in files:
                t = pq.read_table(self._path(table, f["path"]), filesystem=self.fs)
                if not parts:
                    for k in PARTITIONS[table]:
                        v = f[k]
                        t = t.append_column(k, pa.array([int(v) if k == "layer" else v] * t.num_rows,
                                                        pa.int32() if k == "layer" else pa.string()))
                tabs.append(t)
            return pa.concat_tables(tabs)
        except (pa.ArrowException, OSError) as e:
            raise self._fail(e, "read") from None

    def layers(self, model: str, concept: str) -> list[int]:
        return sorted({int(f["layer"]) for f in self._files("activations", {"model": model, "concept": concept})})

    def dataset(self, table: str) -> pds.Dataset | None:
        """The table's live files as one Arrow dataset (partition keys as columns): what DuckDB
        scans in place, local or remote, without copying the store down."""
        import pyarrow.compute as pc

        files = self._files(table)
        if not files:
            return None
        exprs = []
        for f in files:
            e = None
            for k in PARTITIONS[table]:
                term = pc.field(k) == (int(f[k]) if k == "layer" else str(f[k]))
                e = term if e is None else e & term
            exprs.append(e if e is not None else pc.scalar(True))
        # each file's size from the log: on object storage a reader that is not told it asks
        # the server first (one HEAD per file per query)
        fmt = pds.ParquetFileFormat()
        who = _identity() if self.remote else ()
        frags = []
        with _FRAGMENTS_LOCK:
            for f, e in zip(files, exprs):
                path = self._path(table, f["path"])
                key = (who, path, f.get("size"))
                frag = _FRAGMENTS.get(key)
                if frag is None:
                    frag = _FRAGMENTS[key] = fmt.make_fragment(path, self.fs, e, file_size=f.get("size"))
                _FRAGMENTS.move_to_end(key)
                frags.append(frag)
            while len(_FRAGMENTS) > FRAGMENT_CACHE:
                _FRAGMENTS.popitem(last=False)
        return pds.FileSystemDataset(frags, schema=table_schema(table), format=fmt, filesystem=self.fs)

    # -- runs ------------------------------------------------------------------------------------
    def write_run(self, row: pa.Table, run_id: str) -> str:
        """The run's row as one file; a new status replaces it in one commit (remove + add)."""
        from deltalake.transaction import AddAction, RemoveAction

        from .layout import write_parquet

        check_name("run", run_id)
        self._table("runs")
        staged = self.staging()
        rel = f"run-{uuid.uuid4().hex[:12]}-{run_id}.parquet"
        try:
            f = staged / "run.parquet"
            write_parquet(row, f)
            pfs.copy_files(str(f), self._path("runs", rel), source_filesystem=pfs.LocalFileSystem(),
                           destination_filesystem=self.fs)
            add = AddAction(rel, f.stat().st_size, {}, int(time.time() * 1000), True,
                            json.dumps({"numRecords": row.num_rows}))
            for attempt in range(50):
                old = [x["path"] for x in self._files("runs") if x["path"].endswith(f"-{run_id}.parquet")]
                now = int(time.time() * 1000)
                acts = [RemoveAction(p, True, now) for p in old] + [add]
                try:
                    self._table("runs").create_write_transaction(acts, "append", table_schema("runs"))
                    return rel
                except Exception as e:  # noqa: BLE001
                    if type(e).__name__ != "CommitFailedError":
                        raise self._fail(e, "write to") from None
                    time.sleep(random.uniform(0.01, 0.05) * (1 + attempt))
            raise StoreError(f"cannot commit the run {run_id} to {self.uri}: too many concurrent writers")
        except (OSError, pa.ArrowException) as e:
            raise self._fail(e, "write to") from None
        finally:
            import shutil

            shutil.rmtree(staged, ignore_errors=True)

    def reap_runs(self) -> list[str]:
        """Rows `running` whose run died on this machine (its lock file left, nobody holding it):
        status becomes `killed`. Runs of other machines leave no lock here and are left alone."""
        try:
            files = self._files("runs")
            if not files:
                return []
            t = self.read_partition("runs", {})
        except StoreError:
            return []
        status = np.asarray(t.column("status").to_pylist(), dtype=object)
        reaped = []
        for i in np.flatnonzero(status == "running"):
            run_id = t.column("run_id")[int(i)].as_py()
            lock = self.root / "_staging" / f".run-{run_id}.lock"
            with contextlib.suppress(OSError):
                if (not lock.exists() and self.remote) or (lock.exists() and _held(lock)):
                    continue
                row = t.slice(int(i), 1)
                j = row.schema.get_field_index("status")
                self.write_run(row.set_column(j, row.schema.field(j), pa.array(["killed"], pa.string())), run_id)
                reaped.append(run_id)
        return reaped

    def __repr__(self) -> str:
        return f"DeltaStore({self.uri!r})"


__all__ = ["DeltaStore", "is_delta_root", "is_remote", "storage_options", "table_schema"]
