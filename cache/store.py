"""Disk tier: checkpoints in SQLite so sessions survive a restart.

Layout: table `checkpoints` (one row per checkpoint: its tokens, the ids of its full KV blocks, its
recurrent arrays + KV tail, a checksum), table `kv_blocks` (one row per full block of attention
KV) and table `kv_block_refs` (each block's reference count and size, apart from its data: SQLite
rewrites a whole row on update, so counting in the block's own row rewrote every block of a
checkpoint each time one was stored). Rows are keyed by the model fingerprint, so models never
read each other's state; blobs carry the cache format version and fingerprint in a header.

Failure policy: the disk tier is an optimisation, so it never raises to its caller. A corrupt,
truncated, foreign or outdated entry is a miss, logged once and deleted. A failing database (full
disk, I/O error, a schema from a newer version) turns the tier off with one warning; the caller
keeps serving from RAM. A database that cannot be opened for writing (a read-only directory or
copy) is served read-only: its intact entries are hits, nothing is stored, one warning says so.

Threads: all writes happen on one background writer thread fed by a bounded queue (a full queue
drops the write); reads run on the caller's thread with their own connection (WAL lets them proceed
while the writer commits). Only one process should write a cache database at a time.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import queue
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import sqlite_utils

from cache.radix import (
    BLOCK_ID_BYTES,
    TOKEN_DTYPE,
    Match,
    RadixIndex,
    as_tokens,
    checkpoint_key,
    require_invariant,
)
from cache.ram import CachedState, KVLayer, StoredState

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # layout of the blobs below; rows of older formats are deleted on open
_MAGIC = b"AGDC"
_KIND_STATE = 1
_KIND_BLOCK = 2
_MAX_NDIM = 8
_SQL_CHUNK = 500  # ids per IN (...) query, well under SQLite's variable limit


# ---------------------------------------------------------------------------------------------
# Blob format: header, then groups of arrays. No pickle: every field is bounds-checked on read.
#   header = magic "AGDC" | u16 format | u8 kind | u16 len + utf-8 fingerprint | u64 position
#   groups = u32 count, each: u32 count, each array: u8 len + dtype str | u8 ndim | ndim * u64 | raw C-order bytes


def encode_state(
    fingerprint: str, position: int, recurrent: Sequence[Sequence[np.ndarray]], tail: Sequence[KVLayer]
) -> bytes:
    """Blob of one checkpoint's own arrays: recurrent state and the KV rows past its last full block."""
    parts = [_header(fingerprint, _KIND_STATE, position)]
    _encode_groups(recurrent, parts)
    _encode_groups(tail, parts)
    return b"".join(parts)


def decode_state(data: bytes, fingerprint: str) -> tuple[int, tuple[tuple[np.ndarray, ...], ...], tuple[KVLayer, ...]]:
    """(position, recurrent, tail) from `encode_state` output; ValueError on anything malformed."""
    reader = _Reader(data)
    position = _read_header(reader, fingerprint, _KIND_STATE)
    recurrent = _decode_groups(reader)
    tail = _decode_groups(reader)
    reader.expect_end()
    return position, recurrent, _as_kv_layers(tail)


def encode_block(fingerprint: str, kv: Sequence[KVLayer]) -> bytes:
    """Blob of one full block of attention KV (per layer k, v)."""
    parts = [_header(fingerprint, _KIND_BLOCK, 0)]
    _encode_groups(kv, parts)
    return b"".join(parts)


def decode_block(data: bytes, fingerprint: str) -> tuple[KVLayer, ...]:
    reader = _Reader(data)
    _read_header(reader, fingerprint, _KIND_BLOCK)
    kv = _decode_groups(reader)
    reader.expect_end()
    return _as_kv_layers(kv)


def _header(fingerprint: str, kind: int, position: int) -> bytes:
    name = fingerprint.encode()
    return _MAGIC + struct.pack("<HBH", FORMAT_VERSION, kind, len(name)) + name + struct.pack("<Q", position)


def _read_header(reader: _Reader, fingerprint: str, kind: int) -> int:
    if reader.take(len(_MAGIC)) != _MAGIC:
        raise ValueError("not a cache blob (bad magic)")
    version, found_kind, name_length = reader.unpack("<HBH")
    if version != FORMAT_VERSION:
        raise ValueError(f"cache format {version}, expected {FORMAT_VERSION}")
    if found_kind != kind:
        raise ValueError(f"blob kind {found_kind}, expected {kind}")
    if reader.take(name_length) != fingerprint.encode():
        raise ValueError("blob belongs to another model fingerprint")
    return reader.unpack("<Q")[0]


def _encode_groups(groups: Sequence[Sequence[np.ndarray]], parts: list[bytes]) -> None:
    parts.append(struct.pack("<I", len(groups)))
    for arrays in groups:
        parts.append(struct.pack("<I", len(arrays)))
        for array in arrays:
            dtype = array.dtype.str.encode()
            shape = struct.pack(f"<B{array.ndim}Q", array.ndim, *array.shape)
            parts.append(struct.pack("<B", len(dtype)) + dtype + shape)
            parts.append(np.ascontiguousarray(array).tobytes())


def _decode_groups(reader: _Reader) -> tuple[tuple[np.ndarray, ...], ...]:
    groups = []
    for _ in range(reader.unpack("<I")[0]):
        groups.append(tuple(_decode_array(reader) for _ in range(reader.unpack("<I")[0])))
    return tuple(groups)


def _decode_array(reader: _Reader) -> np.ndarray:
    (dtype_length,) = reader.unpack("<B")
    name = bytes(reader.take(dtype_length)).decode("ascii", errors="replace")
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError):
        raise ValueError(f"unknown dtype {name!r}") from None
    if dtype.kind not in "biuf" or dtype.str != name:
        raise ValueError(f"dtype {name!r} is not a plain numeric dtype")
    (ndim,) = reader.unpack("<B")
    if ndim > _MAX_NDIM:
        raise ValueError(f"array has {ndim} dimensions")
    shape = reader.unpack(f"<{ndim}Q")
    count = int(np.prod(shape, dtype=object)) if shape else 1
    raw = reader.take(count * dtype.itemsize)
    return np.frombuffer(raw, dtype, count).reshape(shape)


def _as_kv_layers(groups: tuple[tuple[np.ndarray, ...], ...]) -> tuple[KVLayer, ...]:
    if any(len(pair) != 2 for pair in groups):
        raise ValueError("a KV layer is not a (k, v) pair")
    return tuple((k, v) for k, v in groups)


class _Reader:
    """Cursor over a blob that raises ValueError instead of reading past its end."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._offset = 0

    def take(self, size: int) -> memoryview:
        end = self._offset + size
        if size < 0 or end > len(self._data):
            raise ValueError(f"blob truncated: need {size} bytes at offset {self._offset} of {len(self._data)}")
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def unpack(self, layout: str) -> tuple:
        return struct.unpack(layout, self.take(struct.calcsize(layout)))

    def expect_end(self) -> None:
        if self._offset != len(self._data):
            raise ValueError(f"{len(self._data) - self._offset} unexpected bytes after the blob")


def _checksum(*parts: bytes) -> bytes:
    digest = hashlib.blake2b(digest_size=16, person=b"agentd-row")
    for part in parts:
        digest.update(struct.pack("<Q", len(part)))
        digest.update(part)
    return digest.digest()


# ---------------------------------------------------------------------------------------------
# Schema. _MIGRATIONS[i] takes a database from PRAGMA user_version i to i + 1.


def _schema_v1(db: sqlite_utils.Database) -> None:
    db["checkpoints"].create(
        {
            "fingerprint": str,
            "key": str,
            "format": int,
            "block_size": int,
            "position": int,
            "tokens": bytes,
            "block_ids": bytes,
            "state": bytes,
            "checksum": bytes,
            "last_used": int,
        },
        pk=("fingerprint", "key"),
        not_null=["format", "block_size", "position", "tokens", "block_ids", "state", "checksum", "last_used"],
    )
    db["checkpoints"].create_index(["last_used"])
    db["kv_blocks"].create(
        {"fingerprint": str, "id": bytes, "data": bytes, "checksum": bytes, "refcount": int},
        pk=("fingerprint", "id"),
        not_null=["data", "checksum", "refcount"],
    )


def _schema_v2(db: sqlite_utils.Database) -> None:
    """Reference counts and sizes move out of the block rows (see the module docstring)."""
    db["kv_block_refs"].create(
        {"fingerprint": str, "id": bytes, "refcount": int, "nbytes": int},
        pk=("fingerprint", "id"),
        not_null=["refcount", "nbytes"],
    )
    db.execute(
        "INSERT INTO kv_block_refs (fingerprint, id, refcount, nbytes)"
        " SELECT fingerprint, id, refcount, length(data) FROM kv_blocks"
    )
    db["kv_blocks"].transform(drop={"refcount"})


_MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (_schema_v1, _schema_v2)


class _SchemaTooNew(RuntimeError):
    pass


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection. A WAL database needs its -shm file, which a read-only directory
    cannot get once the last writer removed it: then the file is opened as immutable (nobody can
    write it anyway)."""
    uri = path.resolve().as_uri()
    for query in ("?mode=ro", "?mode=ro&immutable=1"):
        connection = sqlite3.connect(uri + query, uri=True, isolation_level=None, check_same_thread=False)
        try:
            connection.execute("PRAGMA user_version").fetchone()
            return connection
        except sqlite3.OperationalError:
            connection.close()
            if query.endswith("immutable=1"):
                raise
    raise AssertionError("unreachable")


def _connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) on a WAL database."""
    connection = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL").fetchone()
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA journal_size_limit=67108864")
    return connection


@contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _migrate(connection: sqlite3.Connection) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > len(_MIGRATIONS):
        raise _SchemaTooNew(f"database schema {version} is newer than this version knows ({len(_MIGRATIONS)})")
    db = sqlite_utils.Database(connection)
    for step in range(version, len(_MIGRATIONS)):
        with _transaction(connection):
            _MIGRATIONS[step](db)
            connection.execute(f"PRAGMA user_version = {step + 1}")


KnownBlock = Callable[[bytes], "tuple[KVLayer, ...] | None"]


class _Row(NamedTuple):
    """A KV block as read from the database, not yet verified."""

    data: object
    checksum: object


class _Corrupt(Exception):
    """An entry that cannot be served; `bad_blocks` are KV blocks that are themselves damaged."""

    def __init__(self, reason: str, bad_blocks: tuple[bytes, ...] = ()) -> None:
        super().__init__(reason)
        self.bad_blocks = bad_blocks


class DiskStore:
    """SQLite tier for one model fingerprint within a byte budget (least recently used rows go first).

    `budget_bytes` counts blob bytes of all rows in the file (every fingerprint); SQLite's page and
    WAL overhead comes on top.

    Invariants (checked by `sanity_check` once the writer is idle):
    - a KV block's refcount equals the number of checkpoint rows listing it, and is positive;
    - `nbytes` is the sum of all blob lengths and stays within `budget_bytes`;
    - the index holds exactly the usable rows of this fingerprint.
    """

    def __init__(
        self,
        path: Path,
        fingerprint: str,
        budget_bytes: int,
        block_size: int = 64,
        max_pending_writes: int = 8,
    ) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.budget_bytes = budget_bytes
        self.block_size = block_size
        self.nbytes = 0
        self.dropped_writes = 0
        self.discarded_entries = 0
        self.degraded: str | None = None  # why the tier is off, or None while it works
        self.read_only: str | None = None  # why entries are read but none are stored, or None
        self._index = RadixIndex(block_size)
        self._index_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(max_pending_writes)
        self._clock = 0
        self._closed = False
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        try:
            self._open()
        except (sqlite3.Error, OSError, _SchemaTooNew) as error:
            self._degrade(f"cannot open {self.path}: {error}")
        self._thread = threading.Thread(target=self._run, name="cache-disk-writer", daemon=True)
        self._thread.start()

    # --- caller side --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        with self._index_lock:
            return key in self._index

    def match(self, tokens: Sequence[int] | np.ndarray, max_tokens: int | None = None) -> Match:
        with self._index_lock:
            return self._index.match(tokens, max_tokens)

    def read(self, key: str, known_block: KnownBlock = lambda block_id: None) -> StoredState | None:
        """The checkpoint stored under `key`, or None (absent, damaged or tier off). Its arrays are
        read-only views of the blobs read; KV blocks `known_block` returns are used instead of being
        read again (a restarted session's earlier blocks are usually in RAM already).

        Every None also drops `key` from the index, so retrying `match` always ends.
        """
        if self._reader is None:
            self._forget(key)
            return None
        try:
            with self._read_lock:
                row, blocks = self._fetch(key, known_block)
        except sqlite3.Error as error:
            logger.warning("cache disk read failed key=%s error=%s", key, error)
            self._forget(key)  # a later match must not pick it again
            return None
        if row is None:
            self._forget(key)
            return None
        try:
            state = self._decode_entry(key, row, blocks)
        except _Corrupt as corrupt:
            self.discarded_entries += 1
            logger.warning("cache entry discarded key=%s reason=%s", key, corrupt)
            self._forget(key)
            self._submit(functools.partial(self._discard, key, corrupt.bad_blocks))
            return None
        self.touch(key)
        return state

    def write(self, tokens: Sequence[int] | np.ndarray, state: CachedState | StoredState) -> None:
        """Queue the checkpoint after exactly `tokens` for writing; dropped if the queue is full.

        Arrays that are not immutable are copied first (the write happens later, on another thread)."""
        tokens = as_tokens(tokens).copy()
        if len(tokens) != state.position:
            raise ValueError(f"state is at position {state.position} but {len(tokens)} tokens were given")
        if self.degraded is None and self.read_only is None:
            stored = StoredState.of(tokens, state, self.block_size).frozen()
            self._submit(functools.partial(self._put, tokens, stored))

    def touch(self, key: str) -> None:
        """Queue a recency update so a used entry is evicted last."""
        self._submit(functools.partial(self._touch, key))

    def clear(self) -> None:
        """Delete every entry of this fingerprint and wait for it."""
        with self._index_lock:
            self._index.clear()
        self._submit(self._clear, wait_for_room=True)
        self.flush()

    def flush(self) -> None:
        """Wait until every queued write has been applied."""
        self._queue.join()

    def close(self) -> None:
        """Apply queued writes, stop the writer and close the database."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        for connection in (self._reader, self._writer):
            if connection is not None:
                connection.close()
        self._reader = self._writer = None

    def describe(self) -> list[dict]:
        with self._index_lock:
            return [{"key": key, "num_tokens": self._index.position(key)} for key in self._index.ids()]

    def stats(self) -> dict:
        return {
            "entries": len(self._index),
            "bytes": self.nbytes,
            "budget_bytes": self.budget_bytes,
            "degraded": self.degraded,
            "read_only": self.read_only,
            "dropped_writes": self.dropped_writes,
            "discarded_entries": self.discarded_entries,
        }

    def sanity_check(self) -> None:
        """Raise AssertionError if an invariant of the class docstring is broken (call after flush)."""
        self._index.sanity_check()
        if self._reader is None:
            return
        with self._read_lock:
            connection = self._reader
            require_invariant(connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok", "integrity_check")
            refs: dict[tuple[str, bytes], int] = {}
            for fingerprint, ids in connection.execute("SELECT fingerprint, block_ids FROM checkpoints"):
                for block_id in _split_ids(ids):
                    refs[fingerprint, block_id] = refs.get((fingerprint, block_id), 0) + 1
            blocks = connection.execute(
                "SELECT r.fingerprint, r.id, r.refcount, r.nbytes = length(b.data)"
                " FROM kv_block_refs r LEFT JOIN kv_blocks b USING (fingerprint, id)"
            )
            for fingerprint, block_id, refcount, size_right in blocks:
                require_invariant(refcount > 0, "an unreferenced KV block was kept")
                require_invariant(refs.get((fingerprint, block_id)) == refcount, "KV block refcount is wrong")
                require_invariant(size_right == 1, "a KV block's data is missing or its size is wrong")
            counted = connection.execute("SELECT (SELECT COUNT(*) FROM kv_blocks) - (SELECT COUNT(*) FROM kv_block_refs)")
            require_invariant(counted.fetchone()[0] == 0, "a KV block has no reference count")
            require_invariant(self._count_bytes(connection) == self.nbytes, "nbytes differs from the blob lengths")
            usable = {key for (key,) in connection.execute(*self._usable_rows("key"))}
        require_invariant(self.nbytes <= self.budget_bytes, f"nbytes {self.nbytes} over budget {self.budget_bytes}")
        with self._index_lock:
            require_invariant(usable == set(self._index.ids()), "index differs from the usable rows")

    # --- opening --------------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open_file()
        except (sqlite3.OperationalError, PermissionError) as error:
            if not self.path.is_file():
                raise
            self._open_read_only(error)  # read-only directory or file, or locked by another writer
        except sqlite3.DatabaseError as error:
            logger.warning("cache database damaged, starting a new one path=%s error=%s", self.path, error)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._open_file()

    def _open_file(self) -> None:
        writer = _connect(self.path)
        try:
            _migrate(writer)
            self._writer = writer
            self._drop_unusable_rows()
            self.nbytes = self._count_bytes(writer)
            self._clock = writer.execute("SELECT COALESCE(MAX(last_used), 0) FROM checkpoints").fetchone()[0]
            self._discard_damaged(self._load_index(writer))
            self._reader = _connect(self.path)
        except BaseException:
            self._writer = None
            writer.close()
            raise

    def _open_read_only(self, why: Exception) -> None:
        reader = _connect_read_only(self.path)
        try:
            version = reader.execute("PRAGMA user_version").fetchone()[0]
            if version != len(_MIGRATIONS):
                raise _SchemaTooNew(f"database schema {version}, this version needs {len(_MIGRATIONS)}")
            self.nbytes = self._count_bytes(reader)
            damaged = self._load_index(reader)
        except BaseException:
            reader.close()
            raise
        self._reader = reader
        self.read_only = f"cannot write {self.path}: {why}"
        logger.warning(
            "cache disk tier read-only: serving its %d entries, storing nothing new reason=%s (%d damaged entries "
            "skipped)", len(self._index), self.read_only, len(damaged),
        )  # fmt: skip

    def _drop_unusable_rows(self) -> None:
        """Rows of older formats (any model) and ours cut with another block size can never be read."""
        rows = self._writer.execute(
            "SELECT fingerprint, key FROM checkpoints"
            " WHERE format < ? OR (fingerprint = ? AND format = ? AND block_size != ?)",
            (FORMAT_VERSION, self.fingerprint, FORMAT_VERSION, self.block_size),
        ).fetchall()
        for fingerprint, key in rows:
            self._delete(fingerprint, key)
        if rows:
            logger.info("cache dropped outdated entries count=%d", len(rows))

    def _load_index(self, connection: sqlite3.Connection) -> list[str]:
        """Index the usable rows; returns the keys whose tokens do not match (damaged)."""
        damaged = []
        for key, position, tokens in connection.execute(*self._usable_rows("key, position, tokens")):
            if not isinstance(tokens, bytes) or len(tokens) != position * TOKEN_DTYPE.itemsize:
                damaged.append(key)
                continue
            array = np.frombuffer(tokens, TOKEN_DTYPE)
            if checkpoint_key(array) != key:
                damaged.append(key)
                continue
            self._index.insert(array, key)
        return damaged

    def _discard_damaged(self, damaged: list[str]) -> None:
        for key in damaged:
            logger.warning("cache entry discarded key=%s reason=tokens do not match the key", key)
            self._delete(self.fingerprint, key)
        self.discarded_entries += len(damaged)

    def _usable_rows(self, columns: str) -> tuple[str, tuple]:
        return (
            f"SELECT {columns} FROM checkpoints WHERE fingerprint = ? AND format = ? AND block_size = ?",
            (self.fingerprint, FORMAT_VERSION, self.block_size),
        )

    @staticmethod
    def _count_bytes(connection: sqlite3.Connection) -> int:
        checkpoints = connection.execute(
            "SELECT COALESCE(SUM(length(tokens) + length(block_ids) + length(state)), 0) FROM checkpoints"
        ).fetchone()[0]
        blocks = connection.execute("SELECT COALESCE(SUM(nbytes), 0) FROM kv_block_refs").fetchone()[0]
        return checkpoints + blocks

    # --- reading (caller thread) ----------------------------------------------------------------

    def _fetch(self, key: str, known_block: KnownBlock) -> tuple[tuple | None, dict[bytes, Any]]:
        """The checkpoint row and its KV blocks: known ones as given, others as (data, checksum) rows."""
        row = self._reader.execute(
            "SELECT position, tokens, block_ids, state, checksum FROM checkpoints WHERE fingerprint = ? AND key = ?",
            (self.fingerprint, key),
        ).fetchone()
        if row is None or not isinstance(row[2], bytes):
            return row, {}
        blocks: dict[bytes, Any] = {}
        ids = []
        for block_id in _split_ids(row[2]):
            known = known_block(block_id)
            if known is None:
                ids.append(block_id)
            else:
                blocks[block_id] = known
        for start in range(0, len(ids), _SQL_CHUNK):
            chunk = ids[start : start + _SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT id, data, checksum FROM kv_blocks WHERE fingerprint = ? AND id IN ({marks})"
            for block_id, data, checksum in self._reader.execute(query, (self.fingerprint, *chunk)):
                blocks[block_id] = _Row(data, checksum)
        return row, blocks

    def _decode_entry(self, key: str, row: tuple, blocks: dict[bytes, Any]) -> StoredState:
        position, tokens, ids_blob, state_blob, checksum = row
        blobs = (tokens, ids_blob, state_blob, checksum)
        if not isinstance(position, int) or not all(isinstance(blob, bytes) for blob in blobs):
            raise _Corrupt("a column holds the wrong type")
        if _checksum(tokens, ids_blob, state_blob) != checksum:
            raise _Corrupt("checksum mismatch")
        num_blocks = position // self.block_size
        if len(tokens) != position * TOKEN_DTYPE.itemsize or len(ids_blob) != num_blocks * BLOCK_ID_BYTES:
            raise _Corrupt("token or block list length does not match the position")
        if checkpoint_key(np.frombuffer(tokens, TOKEN_DTYPE)) != key:
            raise _Corrupt("tokens do not match the key")
        try:
            stored_position, recurrent, tail = decode_state(state_blob, self.fingerprint)
        except ValueError as error:
            raise _Corrupt(f"state blob: {error}") from None
        if stored_position != position:
            raise _Corrupt("state blob position differs from the row")
        ids = tuple(_split_ids(ids_blob))
        rows = tuple(tuple((a.dtype, (self.block_size, *a.shape[1:])) for a in pair) for pair in tail)
        kv_blocks = tuple(self._decode_block(i, blocks.get(i), rows) for i in ids)
        return StoredState(position, recurrent, ids, kv_blocks, tail)

    def _decode_block(self, block_id: bytes, stored: Any, rows: tuple) -> tuple[KVLayer, ...]:
        """A block row checked and decoded (`rows`: per layer the (dtype, shape) of k and v), or a
        block the caller already holds, as it is."""
        if stored is None:
            raise _Corrupt("a KV block is missing")
        if not isinstance(stored, _Row):
            return stored
        if not isinstance(stored.data, bytes) or _checksum(stored.data) != stored.checksum:
            raise _Corrupt("KV block checksum mismatch", (block_id,))
        try:
            kv = decode_block(stored.data, self.fingerprint)
        except ValueError as error:
            raise _Corrupt(f"KV block: {error}", (block_id,)) from None
        if tuple(tuple((a.dtype, a.shape) for a in pair) for pair in kv) != rows:
            raise _Corrupt("KV block has the wrong shape", (block_id,))
        return kv

    def _forget(self, key: str) -> None:
        with self._index_lock:
            if key in self._index:
                self._index.remove(key)

    # --- writing (writer thread) ----------------------------------------------------------------

    def _submit(self, job: Callable[[], None], wait_for_room: bool = False) -> None:
        if self.degraded is not None or self.read_only is not None or self._closed:
            return
        try:
            self._queue.put(job, block=wait_for_room)
        except queue.Full:
            self.dropped_writes += 1
            logger.debug("cache disk queue full, write dropped")

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self.degraded is None:
                    job()
            except sqlite3.Error as error:
                self._degrade(f"database write failed: {error}")
            except Exception:
                logger.exception("cache disk job failed")
            finally:
                self._queue.task_done()

    def _degrade(self, reason: str) -> None:
        if self.degraded is None:
            self.degraded = reason
            logger.warning("cache disk tier off, continuing RAM-only reason=%s", reason)

    def _put(self, tokens: np.ndarray, state: StoredState) -> None:
        key = checkpoint_key(tokens)
        connection = self._writer
        exists = connection.execute(
            "SELECT 1 FROM checkpoints WHERE fingerprint = ? AND key = ?", (self.fingerprint, key)
        ).fetchone()
        if exists:
            self._touch(key)
            return
        ids = list(state.block_ids)
        stored_sizes = self._block_sizes(ids)
        new_blocks = {
            block_id: encode_block(self.fingerprint, block)
            for block_id, block in zip(ids, state.blocks, strict=True)
            if block_id not in stored_sizes
        }
        state_blob = encode_state(self.fingerprint, state.position, state.recurrent, state.tail)
        tokens_blob, ids_blob = tokens.tobytes(), b"".join(ids)
        own_bytes = len(tokens_blob) + len(ids_blob) + len(state_blob)
        new_bytes = sum(map(len, new_blocks.values()))
        if own_bytes + new_bytes + sum(stored_sizes.values()) > self.budget_bytes:
            logger.debug("cache disk skip key=%s bytes=%d budget=%d", key, own_bytes + new_bytes, self.budget_bytes)
            return
        self._clock += 1
        with _transaction(connection):
            connection.executemany(
                "INSERT INTO kv_blocks (fingerprint, id, data, checksum) VALUES (?, ?, ?, ?)",
                [(self.fingerprint, block_id, data, _checksum(data)) for block_id, data in new_blocks.items()],
            )
            connection.executemany(
                "INSERT INTO kv_block_refs (fingerprint, id, refcount, nbytes) VALUES (?, ?, 0, ?)",
                [(self.fingerprint, block_id, len(data)) for block_id, data in new_blocks.items()],
            )
            connection.executemany(
                "UPDATE kv_block_refs SET refcount = refcount + 1 WHERE fingerprint = ? AND id = ?",
                [(self.fingerprint, block_id) for block_id in ids],
            )
            connection.execute(
                "INSERT INTO checkpoints (fingerprint, key, format, block_size, position, tokens, block_ids, state,"
                " checksum, last_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.fingerprint, key, FORMAT_VERSION, self.block_size, state.position, tokens_blob, ids_blob,
                    state_blob, _checksum(tokens_blob, ids_blob, state_blob), self._clock,
                ),
            )
        self.nbytes += own_bytes + new_bytes
        with self._index_lock:
            self._index.insert(tokens, key)
        self._evict(protect=key)

    def _block_sizes(self, ids: list[bytes]) -> dict[bytes, int]:
        sizes = {}
        for start in range(0, len(ids), _SQL_CHUNK):
            chunk = ids[start : start + _SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT id, nbytes FROM kv_block_refs WHERE fingerprint = ? AND id IN ({marks})"
            sizes.update(self._writer.execute(query, (self.fingerprint, *chunk)))
        return sizes

    def _evict(self, protect: str) -> None:
        while self.nbytes > self.budget_bytes:
            oldest = "SELECT fingerprint, key FROM checkpoints ORDER BY last_used LIMIT 1"
            victim = self._writer.execute(oldest).fetchone()
            if victim is None or tuple(victim) == (self.fingerprint, protect):
                logger.warning("cache disk bytes cannot reach the budget nbytes=%d", self.nbytes)
                return
            logger.debug("cache disk evict key=%s", victim[1])
            self._delete(*victim)

    def _delete(self, fingerprint: str, key: str) -> None:
        """Remove a checkpoint row and the KV blocks only it used."""
        if fingerprint == self.fingerprint:
            self._forget(key)
        connection = self._writer
        with _transaction(connection):
            rows = connection.execute(
                "DELETE FROM checkpoints WHERE fingerprint = ? AND key = ?"
                " RETURNING block_ids, length(tokens) + length(block_ids) + length(state)",
                (fingerprint, key),
            ).fetchall()
            if not rows:
                return
            ids_blob, freed = rows[0]
            for block_id in _split_ids(ids_blob):
                connection.execute(
                    "UPDATE kv_block_refs SET refcount = refcount - 1 WHERE fingerprint = ? AND id = ?",
                    (fingerprint, block_id),
                )
                freed += _delete_block(connection, fingerprint, block_id, only_unreferenced=True)
        self.nbytes -= freed

    def _discard(self, key: str, bad_blocks: tuple[bytes, ...]) -> None:
        """Delete a damaged entry and damaged blocks (entries still listing them miss and go later)."""
        connection = self._writer
        freed = 0
        with _transaction(connection):
            for block_id in bad_blocks:
                freed += _delete_block(connection, self.fingerprint, block_id)
        self.nbytes -= freed
        self._delete(self.fingerprint, key)

    def _touch(self, key: str) -> None:
        self._clock += 1
        self._writer.execute(
            "UPDATE checkpoints SET last_used = ? WHERE fingerprint = ? AND key = ?",
            (self._clock, self.fingerprint, key),
        )

    def _clear(self) -> None:
        connection = self._writer
        with _transaction(connection):
            connection.execute("DELETE FROM checkpoints WHERE fingerprint = ?", (self.fingerprint,))
            connection.execute("DELETE FROM kv_blocks WHERE fingerprint = ?", (self.fingerprint,))
            connection.execute("DELETE FROM kv_block_refs WHERE fingerprint = ?", (self.fingerprint,))
        self.nbytes = self._count_bytes(connection)
        with self._index_lock:
            self._index.clear()


def _delete_block(
    connection: sqlite3.Connection, fingerprint: str, block_id: bytes, only_unreferenced: bool = False
) -> int:
    """Delete a KV block (with `only_unreferenced`, only once no checkpoint lists it); returns the
    bytes freed."""
    unreferenced = " AND refcount <= 0" if only_unreferenced else ""
    gone = connection.execute(
        f"DELETE FROM kv_block_refs WHERE fingerprint = ? AND id = ?{unreferenced} RETURNING nbytes",
        (fingerprint, block_id),
    ).fetchall()
    if gone:
        connection.execute("DELETE FROM kv_blocks WHERE fingerprint = ? AND id = ?", (fingerprint, block_id))
    return sum(size for (size,) in gone)


def _split_ids(blob: bytes) -> list[bytes]:
    return [blob[i : i + BLOCK_ID_BYTES] for i in range(0, len(blob) - BLOCK_ID_BYTES + 1, BLOCK_ID_BYTES)]
