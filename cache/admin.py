"""Offline views of a cache database for `agentd cache stats|ls|clear` (no model needed).

Reads go through a read-only connection so a running daemon is not disturbed; `clear` deletes
every row in one transaction (WAL keeps a concurrent daemon's readers consistent, and a daemon
that still indexes a deleted row treats it as a miss).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cache.session import DB_FILENAME


def database_path(cache_dir: Path) -> Path:
    path = Path(cache_dir) / DB_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no session cache database at {path}")
    return path


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """SQLite errors name no file ("database disk image is malformed"): say which, and the way out."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise sqlite3.DatabaseError(
            f"session cache database {path}: {exc} (`agentd cache clear --force` removes it)"
        ) from exc


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    with _naming(path):
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            yield con
        finally:
            con.close()


def summary(cache_dir: Path) -> list[dict[str, Any]]:
    """Per model fingerprint: checkpoints, deepest position, bytes of states and of KV blocks."""
    path = database_path(cache_dir)
    with _read_only(path) as con:
        rows = con.execute(
            "SELECT fingerprint, COUNT(*), MAX(position), SUM(LENGTH(state) + LENGTH(tokens)) "
            "FROM checkpoints GROUP BY fingerprint"
        ).fetchall()
        blocks = dict(con.execute("SELECT fingerprint, SUM(LENGTH(data)) FROM kv_blocks GROUP BY fingerprint"))
    return [
        {"fingerprint": fp, "checkpoints": n, "max_tokens": deepest, "state_bytes": size or 0,
         "kv_bytes": blocks.get(fp, 0) or 0}
        for fp, n, deepest, size in rows
    ]


def entries(cache_dir: Path) -> list[dict[str, Any]]:
    """Every stored checkpoint, most recently used first."""
    with _read_only(database_path(cache_dir)) as con:
        rows = con.execute(
            "SELECT fingerprint, key, position, LENGTH(state), last_used FROM checkpoints ORDER BY last_used DESC"
        ).fetchall()
    return [
        {"fingerprint": fp, "key": key, "num_tokens": pos, "state_bytes": size, "last_used": used}
        for fp, key, pos, size, used in rows
    ]


def clear(cache_dir: Path) -> int:
    """Delete every checkpoint and KV block; returns how many checkpoints were removed."""
    path = database_path(cache_dir)
    with _naming(path), contextlib.closing(sqlite3.connect(path, timeout=5.0, isolation_level=None)) as con:
        con.execute("BEGIN IMMEDIATE")
        removed = con.execute("DELETE FROM checkpoints").rowcount
        con.execute("DELETE FROM kv_blocks")
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'kv_block_refs'").fetchone():  # schema 2 on
            con.execute("DELETE FROM kv_block_refs")
        con.execute("COMMIT")
        con.execute("VACUUM")
    return removed


def remove(cache_dir: Path) -> list[Path]:
    """Delete the database files themselves (also a damaged database); returns those removed.
    A daemon that has the database open keeps writing to the removed file: stop it first."""
    path = database_path(cache_dir)
    removed = []
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            file.unlink()
            removed.append(file)
    return removed
