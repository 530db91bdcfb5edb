"""Fairness state that survives a restart: the policy's counters and each client's usage, in SQLite.

One snapshot is written in one transaction (all of it or none: a crash mid-write leaves the previous snapshot).
The schema is versioned (``PRAGMA user_version``); a file of a newer version is refused with a clear error,
never overwritten. Writes run in a worker thread (each with its own connection), so the event loop never waits.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (kind TEXT NOT NULL, client TEXT NOT NULL, value REAL NOT NULL,
                                     PRIMARY KEY (kind, client));
CREATE TABLE IF NOT EXISTS usage (client TEXT PRIMARY KEY, requests INTEGER NOT NULL,
                                  prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL);
"""


class StateError(RuntimeError):
    """The state file cannot be used (newer schema, not SQLite, unreadable), naming the file."""


@dataclass
class Usage:
    """What a client has been served in all (quotas are checked against it)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Snapshot:
    policy: str
    counters: dict[str, dict[str, float]] = field(default_factory=dict)
    usage: dict[str, Usage] = field(default_factory=dict)
    saved_at: float = 0.0


class StateStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as db:
            self._migrate(db)

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as e:
            raise StateError(f"{self.path}: not a usable SQLite file ({e})") from None
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        (v,) = db.execute("PRAGMA user_version").fetchone()   # (_connect has read the header: a SQLite file)
        if v > SCHEMA_VERSION:
            raise StateError(f"{self.path}: state schema version {v} is newer than this daemon's "
                             f"({SCHEMA_VERSION}); upgrade the daemon or move the file away")
        if v == 0:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            if tables:
                raise StateError(f"{self.path}: an SQLite file without this daemon's schema "
                                 f"(tables {', '.join(tables)}); move it away")
            db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")

    def load(self) -> Snapshot | None:
        """The last snapshot, or None for a fresh file."""
        with self._lock, contextlib.closing(self._connect()) as db:
            meta = dict(db.execute("SELECT key, value FROM meta"))
            if "policy" not in meta:
                return None
            snap = Snapshot(meta["policy"], saved_at=float(meta["saved_at"]))   # save() writes both at once
            for kind, client, value in db.execute("SELECT kind, client, value FROM counters"):
                snap.counters.setdefault(kind, {})[client] = value
            for client, n, p, c in db.execute("SELECT client, requests, prompt_tokens, completion_tokens FROM usage"):
                snap.usage[client] = Usage(n, p, c)
            return snap

    def save(self, snap: Snapshot) -> None:
        """Replace the stored snapshot in one transaction."""
        with self._lock:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM counters")
                db.execute("DELETE FROM usage")
                db.executemany("INSERT INTO counters VALUES (?, ?, ?)",
                               [(k, c, float(v)) for k, per in snap.counters.items() for c, v in per.items()])
                db.executemany("INSERT INTO usage VALUES (?, ?, ?, ?)",
                               [(c, u.requests, u.prompt_tokens, u.completion_tokens) for c, u in snap.usage.items()])
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                               [("policy", snap.policy), ("saved_at", repr(snap.saved_at or time.time()))])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            finally:
                db.close()
