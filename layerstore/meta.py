"""Metadata in SQLite: images, tags, repo digests, layers, containers.

Every change is one transaction (``BEGIN IMMEDIATE``), so an ``rmi`` that
untags and deletes is all or nothing and several processes can share a store
(WAL journal, a busy timeout instead of "database is locked"). Counts such as
"images sharing this layer" are queries, never stored counters that a crash
could leave wrong.
"""
from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from unionfs import crashpoints

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id           TEXT PRIMARY KEY,      -- config digest: the image ID
    config_size  INTEGER NOT NULL,
    created      TEXT,                  -- from the config, RFC 3339
    architecture TEXT NOT NULL,
    os           TEXT NOT NULL,
    variant      TEXT,
    added        REAL NOT NULL          -- when the store got it
);
CREATE TABLE IF NOT EXISTS manifests (
    digest     TEXT PRIMARY KEY,
    image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    media_type TEXT NOT NULL,
    size       INTEGER NOT NULL,
    synthetic  INTEGER NOT NULL DEFAULT 0  -- made here for an archive that had none
);
CREATE TABLE IF NOT EXISTS layers (
    diff_id  TEXT PRIMARY KEY,
    size     INTEGER NOT NULL            -- bytes of the uncompressed tar
);
CREATE TABLE IF NOT EXISTS image_layers (
    image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    diff_id    TEXT NOT NULL REFERENCES layers(diff_id),
    blob       TEXT NOT NULL,
    media_type TEXT NOT NULL,
    blob_size  INTEGER NOT NULL,
    PRIMARY KEY (image_id, position)
);
CREATE TABLE IF NOT EXISTS tags (
    repository TEXT NOT NULL,
    tag        TEXT NOT NULL,
    image_id   TEXT NOT NULL REFERENCES images(id),
    PRIMARY KEY (repository, tag)
);
CREATE TABLE IF NOT EXISTS repo_digests (
    repository TEXT NOT NULL,
    digest     TEXT NOT NULL,
    image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    PRIMARY KEY (repository, digest)
);
CREATE TABLE IF NOT EXISTS containers (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    image_id   TEXT NOT NULL REFERENCES images(id),
    mountpoint TEXT,
    read_only  INTEGER NOT NULL DEFAULT 0,
    created    REAL NOT NULL,
    image      TEXT                       -- the image as the user named it (NULL in stores made before)
);
CREATE TABLE IF NOT EXISTS leases (      -- work in progress that prune must not touch
    key     TEXT NOT NULL,                -- a blob digest or a diff_id
    pid     INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS image_layers_diff ON image_layers(diff_id);
CREATE INDEX IF NOT EXISTS tags_image ON tags(image_id);
"""
# (table, column, declaration): what SCHEMA gained since its first release, in order.
ADDED_COLUMNS = (("containers", "image", "TEXT"),)


SQLITE_FULL = 13
SQLITE_IOERR = 10
LOW_SPACE = 1 << 20  # an I/O error with less free space than this is a full disk


def disk_full(exc: sqlite3.Error, path: Path) -> bool:
    """Whether SQLite failed for want of space: SQLITE_FULL, or an I/O error (the -shm file
    of a WAL database cannot be made) on a filesystem that is out of space."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == SQLITE_FULL:
        return True
    if code is None or code & 0xFF != SQLITE_IOERR:
        return False
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < LOW_SPACE


def no_space(path: Path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


SQLITE_BUSY = 5
BUSY_WAIT = 60.0  # seconds, as the busy timeout
T = TypeVar("T")


def _patient(step: Callable[[], T]) -> T:
    """Run step, waiting out "database is locked" as the busy timeout would.

    SQLite answers SQLITE_BUSY without calling its busy handler in a few
    cases: a journal-mode switch, a WAL being recovered or checkpointed by a
    connection that is closing in another process. Several commands started
    at once on one store meet them; waiting a moment is all they need.
    """
    deadline = time.monotonic() + BUSY_WAIT
    delay = 0.005
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF != SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


class Metadata:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, timeout=BUSY_WAIT, isolation_level=None, check_same_thread=False)
        try:
            self.db.row_factory = sqlite3.Row
            _patient(lambda: self.db.execute("PRAGMA journal_mode=WAL"))
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA synchronous=FULL")
            _patient(lambda: self.db.executescript(SCHEMA))
            self._add_columns()
        except sqlite3.Error as exc:
            self.db.close()
            if disk_full(exc, path):
                raise no_space(path) from exc
            raise

    def _add_columns(self) -> None:
        """Columns added to tables after stores were made with them (CREATE TABLE IF NOT
        EXISTS leaves an existing table as it is)."""
        for table, column, decl in ADDED_COLUMNS:
            if self._has_column(table, column):
                continue
            with self.transaction() as tx:  # another process may be adding it at the same moment
                if not self._has_column(table, column):
                    tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def _has_column(self, table: str, column: str) -> bool:
        return any(row["name"] == column for row in self.db.execute(f"PRAGMA table_info({table})"))

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self, keep: bool = True) -> Iterator[sqlite3.Connection]:
        """One atomic change; other processes wait for it (busy timeout).

        A full disk is an ``OSError`` (ENOSPC), as everywhere else in the store,
        and the transaction is rolled back: nothing of it is kept.
        ``keep=False`` rolls it back at the end: a question asked of what a
        change would do, with the store held still meanwhile.
        """
        try:
            _patient(lambda: self.db.execute("BEGIN IMMEDIATE"))
            try:
                yield self.db
                if keep:
                    crashpoints.point("meta.commit")
                    _patient(lambda: self.db.execute("COMMIT"))
                    crashpoints.point("meta.committed")
                else:
                    self.db.execute("ROLLBACK")
            except BaseException:
                if self.db.in_transaction:  # SQLite may have rolled back already
                    self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if disk_full(exc, self.path):
                raise no_space(self.path) from exc
            raise

    def query(self, sql: str, *args: object) -> list[sqlite3.Row]:
        return _patient(lambda: self.db.execute(sql, args).fetchall())

    def one(self, sql: str, *args: object) -> sqlite3.Row | None:
        return _patient(lambda: self.db.execute(sql, args).fetchone())
