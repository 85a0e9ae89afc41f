"""agentd/turn_seal.py (blobs that open only for their own daemon and model) and
agentd/responses_store.py (bounded, persistent stored responses)."""

from __future__ import annotations

import argparse
import base64
import secrets
import stat

from agentd import serve_cli
from agentd.config import ServeConfig
from agentd.responses_store import ResponseStore
from agentd.turn_seal import KEY_FILENAME, TurnSealer, digest

IDS = [151667, 198, 42, 7, 151668, 271, 0, 2**31 - 1]


def test_a_sealed_turn_opens_to_its_ids_and_digests(tmp_path):
    sealer = TurnSealer.load(tmp_path, "model-a")
    blob = sealer.seal('["hi",[]]', "  thought \n", IDS)
    turn = sealer.open(blob)
    assert turn is not None and turn.body_ids == IDS
    assert (turn.reply, turn.reasoning) == (digest('["hi",[]]'), digest("thought"))
    assert b"thought" not in base64.b64decode(blob) and sealer.seal('["hi",[]]', "", IDS) != blob  # opaque, nonced
    assert stat.S_IMODE((tmp_path / KEY_FILENAME).stat().st_mode) == 0o600
    assert TurnSealer.load(tmp_path, "model-a").open(blob) == turn  # the key survives a restart


def test_anything_else_opens_to_none(tmp_path):
    sealer = TurnSealer.load(tmp_path / "a", "model-a")
    blob = sealer.seal("reply", "", IDS)
    raw = bytearray(base64.b64decode(blob))
    for at in (0, 20, len(raw) - 1):  # nonce, ciphertext, tag
        flipped = bytearray(raw)
        flipped[at] ^= 1
        assert sealer.open(base64.b64encode(bytes(flipped)).decode()) is None
    assert TurnSealer.load(tmp_path / "b", "model-a").open(blob) is None  # another daemon's key
    assert TurnSealer.load(tmp_path / "a", "model-b").open(blob) is None  # another model
    for junk in ("", "not base64!", base64.b64encode(b"short").decode(), blob[:-8]):
        assert sealer.open(junk) is None


def test_the_store_keeps_responses_across_reopening_and_deletes(tmp_path):
    path = tmp_path / "r.sqlite3"
    store = ResponseStore(path, 1 << 20)
    items = [{"type": "message", "role": "user", "content": "hi"}]
    assert store.put("resp_1", b'{"id": "resp_1"}', items)
    store.close()
    store = ResponseStore(path, 1 << 20)
    got = store.get("resp_1")
    assert got is not None and got.body == b'{"id": "resp_1"}' and got.items == items
    assert store.delete("resp_1") and not store.delete("resp_1") and store.get("resp_1") is None
    assert store.num_bytes == 0


def test_the_store_evicts_the_oldest_beyond_its_budget(tmp_path):
    store = ResponseStore(tmp_path / "r.sqlite3", 4000)
    for i in range(10):  # random text: about 1 kB compressed each
        assert store.put(f"resp_{i}", b"{}", [{"type": "message", "role": "user", "content": secrets.token_hex(1000)}])
        assert store.num_bytes <= 4000
    kept = [i for i in range(10) if store.get(f"resp_{i}") is not None]
    assert kept and kept == list(range(10 - len(kept), 10)) and len(kept) < 10
    assert not store.put("resp_big", b"{}", [{"content": secrets.token_hex(4000)}])  # alone over budget
    reopened = ResponseStore(tmp_path / "r.sqlite3", 4000)
    assert reopened.num_bytes == store.num_bytes and len(reopened) == len(kept)


def test_the_budget_flag():
    parser = argparse.ArgumentParser(prog="agentd")
    serve_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--responses-max-mb", "7"])
    assert serve_cli.config_from_args(args).responses_max_mb == 7
    assert ServeConfig().responses_max_mb == 256
    assert serve_cli.run(parser.parse_args(["serve", "--responses-max-mb", "-1"])) == 2
