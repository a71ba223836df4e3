"""The warehouse on a cluster: writers on a working copy, readers on published snapshots.

DuckDB lets one process write a database file, or several read it, never both at once: a
step that reads while another pod writes fails on the file's lock ("Conflicting lock is
held"), and over NFS a dead node's lock can outlive it. On Kubernetes the steps of a run
are pods on different nodes sharing one volume, so the code location of deploy/ keeps
writers and readers on different files:

- the steps of the pool `warehouse` (one at a time) write `warehouse-writer/warehouse.duckdb`
  under the data directory, which no other step opens; when such a step succeeds and has
  changed the file, the file, checkpointed, is copied to a new snapshot
  `warehouse-snapshots/<time>-<id>.duckdb`, and the link `warehouse.duckdb` is switched to
  it (a rename: atomic);
- every other step opens `warehouse.duckdb` read-only: the newest snapshot, which nothing
  ever writes. So does the pipeline code that opens the warehouse by its path (the
  champion's model, the tuner). A reader keeps the snapshot it opened until it closes it;
  a snapshot is deleted only when it is not among the newest `keep` and was superseded
  more than `keep_hours` ago: longer than any run may last (run monitoring stops a run
  after 4 hours), since over NFS a file deleted under a reader on another node is gone for
  it too.

A data directory of the single-file layout (`warehouse.duckdb`, a plain file) turns into
this one at the first write: the working copy starts as a copy of it.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import duckdb
from dagster._utils.backoff import backoff

from assets.resources import WarehouseResource, _step_pool

WRITER_DIR = "warehouse-writer"
SNAPSHOT_DIR = "warehouse-snapshots"


class PublishedWarehouse(WarehouseResource):
    """`database`: the published snapshot readers open (the data directory's warehouse.duckdb);
    the writers' working copy and the snapshots lie beside it."""

    keep: int = 3
    keep_hours: float = 6.0

    @property
    def working_database(self) -> Path:
        return Path(self.database).parent / WRITER_DIR / Path(self.database).name

    @contextmanager
    def get_connection(self):
        if _step_pool() not in (None, "warehouse"):
            with super().get_connection() as con:  # read-only, on the newest snapshot
                yield con
            return
        working = self.working_database
        working.parent.mkdir(parents=True, exist_ok=True)
        published = Path(self.database)
        if not working.exists() and published.exists():
            shutil.copyfile(published, working)
        before = _stamp(working)
        con = backoff(fn=duckdb.connect, retry_on=(RuntimeError, duckdb.IOException),
                      kwargs={"database": str(working), "read_only": False,
                              "config": {"custom_user_agent": "dagster", **self.connection_config}},
                      max_retries=10)
        try:
            yield con
            con.execute("CHECKPOINT")
        finally:
            con.close()
        if _stamp(working) != before or not published.exists():
            publish(working, published, keep=self.keep, keep_hours=self.keep_hours)


def _stamp(path: Path) -> tuple[int, int] | None:
    """When and how big: a step that wrote nothing leaves both as they were."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def publish(working: Path, published: Path, keep: int = 3, keep_hours: float = 6.0) -> Path:
    """A snapshot of the (checkpointed) working file; `published` is switched to it."""
    snapshots = published.parent / SNAPSHOT_DIR
    snapshots.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}.duckdb"
    partial = snapshots / f".{name}.partial"
    try:
        shutil.copyfile(working, partial)
        os.replace(partial, snapshots / name)
    finally:
        partial.unlink(missing_ok=True)
    link = published.parent / f".{published.name}.{uuid.uuid4().hex[:8]}.link"
    link.symlink_to(Path(SNAPSHOT_DIR) / name)
    os.replace(link, published)
    prune(snapshots, current=name, keep=keep, keep_hours=keep_hours)
    return snapshots / name


def prune(snapshots: Path, current: str, keep: int, keep_hours: float) -> list[str]:
    """Deletes the snapshots that are not among the newest `keep` and were superseded (the
    next one was made) more than `keep_hours` ago."""
    paths = sorted(snapshots.glob("*.duckdb"), key=lambda p: p.name)
    cutoff = time.time() - keep_hours * 3600
    gone = []
    for path, successor in zip(paths[:-keep] if keep else paths, paths[1:]):
        if path.name != current and successor.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            gone.append(path.name)
    return gone
