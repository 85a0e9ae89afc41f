"""Stored Responses (`store: true`): what `GET /v1/responses/{id}` returns and what
`previous_response_id` continues from, in SQLite beside the session cache.

Each row holds the response body as returned and the conversation it ends: every input item
(those of the response it continued included) and its output items, the reasoning item carrying
the turn's sealed ids (agentd.turn_seal), so a continuation splices them back exactly. Rows are
self-contained: evicting an old response never breaks a newer one. The oldest rows go first when
the rows together pass `max_bytes`. Blobs are zlib-compressed JSON.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

log = logging.getLogger("agentd")

DB_FILENAME = "responses.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    body BLOB NOT NULL,
    items BLOB NOT NULL,
    size INTEGER NOT NULL
)
"""


@dataclass(frozen=True)
class StoredResponse:
    body: bytes  # the response object as returned (JSON)
    items: list[dict[str, Any]]  # input + output items, for previous_response_id


class ResponseStore:
    """Thread-safe; every method may block on disk, so callers run it off the event loop."""

    def __init__(self, path: Path, max_bytes: int):
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()
        self._size = self._db.execute("SELECT total(size) FROM responses").fetchone()[0]

    def put(self, response_id: str, body: bytes, items: list[dict[str, Any]]) -> bool:
        """Keep a response; False when it alone is larger than the budget."""
        packed = zlib.compress(msgspec.json.encode(items))
        packed_body = zlib.compress(body)
        size = len(packed) + len(packed_body)
        if size > self.max_bytes:
            return False
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                (response_id, time.time(), packed_body, packed, size),
            )
            self._size += size
            self._evict()
        return True

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute("SELECT body, items FROM responses WHERE id = ?", (response_id,)).fetchone()
        if row is None:
            return None
        try:
            return StoredResponse(zlib.decompress(row[0]), msgspec.json.decode(zlib.decompress(row[1])))
        except (zlib.error, msgspec.DecodeError):
            log.warning("stored response %s is corrupt; dropping it", response_id)
            self.delete(response_id)
            return None

    def delete(self, response_id: str) -> bool:
        with self._lock:
            row = self._db.execute("DELETE FROM responses WHERE id = ? RETURNING size", (response_id,)).fetchone()
            if row is not None:
                self._size -= row[0]
        return row is not None

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM responses").fetchone()[0]

    @property
    def num_bytes(self) -> int:
        return int(self._size)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _evict(self) -> None:
        while self._size > self.max_bytes:
            row = self._db.execute(
                "DELETE FROM responses WHERE id = (SELECT id FROM responses ORDER BY created_at LIMIT 1) RETURNING size"
            ).fetchone()
            if row is None:
                self._size = 0
                return
            self._size -= row[0]
