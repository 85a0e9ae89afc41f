"""Sealed turns: the exact token ids of an assistant turn, handed to the client as an opaque blob.

A Responses client that keeps no server state (`store: false`, Codex) asks for
`reasoning.encrypted_content` and sends the reasoning item back in its next request. The blob we
put there carries the turn's body ids (what followed `<|im_start|>assistant\\n`: the generation
prompt's tail and every generated id), so the next prompt can hold them verbatim and hit the
turn's end-of-generation checkpoint instead of a template re-rendering that diverges inside it.

The blob is encrypted (SHAKE-256 keystream) and authenticated (HMAC-SHA256, encrypt-then-MAC)
with a secret kept beside the session cache, and names the model it belongs to and digests of
the reply it was made with. Anything that does not verify (another daemon's key, another model,
an edited blob, a reply the client changed) opens to None: the turn is then rendered by the
template alone, never spliced wrongly and never an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
from array import array
from pathlib import Path

import msgspec

log = logging.getLogger("agentd")

KEY_FILENAME = "responses.key"
_VERSION = b"agentd-turn-1"
_NONCE_BYTES = 16
_TAG_BYTES = 32


class SealedTurn(msgspec.Struct, frozen=True):
    model: str  # fingerprint of the model whose vocabulary the ids are in
    reply: str  # sha256 of the reply as returned (history.reply_key)
    reasoning: str  # sha256 of its reasoning text, trimmed
    ids: bytes  # int32 body ids

    @property
    def body_ids(self) -> list[int]:
        return array("i", self.ids).tolist()


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class TurnSealer:
    """Seals and opens turn blobs with one secret; `model` binds them to one vocabulary."""

    def __init__(self, secret: bytes, model: str):
        self.model = model
        self._cipher_key = hmac.digest(secret, b"cipher", "sha256")
        self._mac_key = hmac.digest(secret, b"mac", "sha256")

    @classmethod
    def load(cls, directory: Path, model: str) -> "TurnSealer":
        """With the secret in `directory` (created on first use); a directory that cannot hold it
        gives a secret of this process only (blobs then do not survive a restart)."""
        return cls(_secret(directory / KEY_FILENAME), model)

    def seal(self, reply: str, reasoning: str, body_ids: list[int]) -> str:
        turn = SealedTurn(self.model, digest(reply), digest(reasoning.strip()), array("i", body_ids).tobytes())
        plain = msgspec.msgpack.encode(turn)
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = nonce + _xor(plain, self._keystream(nonce, len(plain)))
        return base64.b64encode(sealed + self._tag(sealed)).decode()

    def open(self, blob: str) -> SealedTurn | None:
        """The turn in `blob`, or None when it is not one of ours for this model."""
        try:
            raw = base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            return None
        sealed, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if len(sealed) <= _NONCE_BYTES or not hmac.compare_digest(tag, self._tag(sealed)):
            return None
        nonce, body = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        try:
            turn = msgspec.msgpack.decode(_xor(body, self._keystream(nonce, len(body))), type=SealedTurn)
        except msgspec.DecodeError:
            return None
        return turn if turn.model == self.model and turn.ids and len(turn.ids) % 4 == 0 else None

    def _keystream(self, nonce: bytes, size: int) -> bytes:
        return hashlib.shake_256(_VERSION + self._cipher_key + nonce).digest(size)

    def _tag(self, sealed: bytes) -> bytes:
        return hmac.digest(self._mac_key, _VERSION + sealed, "sha256")


def _xor(data: bytes, stream: bytes) -> bytes:
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(len(data), "little")


def _secret(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot read %s (%s); encrypted turns will not survive a restart", path, exc)
        return secrets.token_bytes(32)
    secret = secrets.token_bytes(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_bytes()
    except OSError as exc:
        log.warning("cannot write %s (%s); encrypted turns will not survive a restart", path, exc)
    return secret
