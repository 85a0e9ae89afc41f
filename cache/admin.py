"""Offline views of a cache database for `agentd cache stats|ls|clear` (no model needed).

Reads go through a read-only connection so a running daemon is not disturbed; `clear` deletes
every row in one transaction (WAL keeps a concurrent daemon's readers consistent, and a daemon
that still indexes a deleted row treats it as a miss).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from cache.session import DB_FILENAME


def database_path(cache_dir: Path) -> Path:
    path = Path(cache_dir) / DB_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no session cache database at {path}")
    return path


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)


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
    con = sqlite3.connect(database_path(cache_dir), timeout=5.0, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        removed = con.execute("DELETE FROM checkpoints").rowcount
        con.execute("DELETE FROM kv_blocks")
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'kv_block_refs'").fetchone():  # schema 2 on
            con.execute("DELETE FROM kv_block_refs")
        con.execute("COMMIT")
        con.execute("VACUUM")
    finally:
        con.close()
    return removed
