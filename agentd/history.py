"""Assistant turns exactly as generated, so that re-sent history keeps the model's own tokens.

An agent sends our reply back inside its next request. The chat template re-renders it from the
parsed fields (trimmed text, reasoning dropped, tool-call arguments re-serialized in the client's
key order and spacing, 1.50 written as 1.5) and the text is tokenized afresh, so the new prompt
leaves the cached end-of-generation state inside that turn and the whole turn is recomputed.
`GeneratedTurns` remembers, per reply, every token after `<|im_start|>assistant\\n`: the tail of
the generation prompt and the generated ids. `plan.chat_prompt` splices them back in.

A turn is found by what the template renders of it, as we returned it (text content trimmed and
text parts joined; tool calls by id, name and arguments as canonical JSON), together with a
digest of the conversation before it, so two conversations that happen to get the same short
reply never borrow each other's tokens. Reasoning is not part of the key (clients drop it, which
is why the tokens are restored); a client that does send reasoning must send ours.
"""

from __future__ import annotations

import hashlib
import json
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

TURN_OPEN = "<|im_start|>assistant\n"
TURN_CLOSE = "<|im_end|>"
MESSAGE_START = "<|im_start|>"
DEFAULT_MAX_TURNS = 4096
DEFAULT_MAX_TOKENS = 4 << 20  # 16 MiB of int32 ids
MAX_VARIANTS = 4  # different generations of one key kept apart (told apart by their reasoning)

_REASONING_ALIASES = ("reasoning_content", "thinking", "reasoning")  # as engine.chat_template reads them
_JSON = {"ensure_ascii": False, "separators": (",", ":")}


@dataclass(frozen=True)
class TurnFrame:
    """An assistant turn's frame in token ids. Only vocabularies whose `<|im_start|>` and
    `<|im_end|>` are added tokens have one: those split BPE, so the ids on either side of a
    spliced turn are the same as in a tokenization of the whole text."""

    open_ids: tuple[int, ...]  # "<|im_start|>assistant\n"
    close_id: int  # "<|im_end|>"

    @classmethod
    def of(cls, tokenizer: Any) -> TurnFrame | None:
        start, close = _split_token(tokenizer, MESSAGE_START), _split_token(tokenizer, TURN_CLOSE)
        if start is None or close is None:
            return None
        return cls(tuple(tokenizer.encode(TURN_OPEN)), close)

    def body(self, prompt_ids: Sequence[int]) -> list[int] | None:
        """The ids after the prompt's last turn opening (the generation prompt's tail), or None
        when the prompt does not end in an assistant turn tokenized on the frame."""
        start = self.open_ids[0]
        for at in range(len(prompt_ids) - 1, -1, -1):
            if prompt_ids[at] == start:
                end = at + len(self.open_ids)
                return list(prompt_ids[end:]) if tuple(prompt_ids[at:end]) == self.open_ids else None
        return None


def _split_token(tokenizer: Any, text: str) -> int | None:
    """The id of `text` when it is one token that text on either side never merges with."""
    ids = tokenizer.encode(text)
    if len(ids) != 1:
        return None
    side = tokenizer.encode("a")
    return ids[0] if tokenizer.encode("a" + text + "a") == side + ids + side else None


@dataclass(frozen=True)
class GeneratedTurn:
    reasoning: str  # as returned, trimmed
    body_ids: array  # int32 ids after "<|im_start|>assistant\n"


class GeneratedTurns:
    """Thread-safe LRU memo: assistant reply as returned -> the ids it was generated as.
    Bounded by replies kept (`max_turns`) and by the ids they hold together (`max_tokens`)."""

    def __init__(self, max_turns: int = DEFAULT_MAX_TURNS, max_tokens: int = DEFAULT_MAX_TOKENS):
        if max_turns < 1 or max_tokens < 1:
            raise ValueError(f"memo bounds must be positive, got {max_turns} turns, {max_tokens} tokens")
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple[bytes, str], tuple[GeneratedTurn, ...]] = OrderedDict()
        self._num_tokens = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

    def record(self, context: Sequence[dict[str, Any]], reply: dict[str, Any], body_ids: Sequence[int]) -> bool:
        """Remember `reply` (as returned to the client) to `context` (the request's messages) as
        generated with `body_ids`; False when it cannot be keyed or is larger than the memo."""
        digest = _context_digests(context, len(context))[-1]
        key = reply_key(reply)
        parts = _reply_parts(reply)
        if digest is None or key is None or parts is None or not 0 < len(body_ids) <= self.max_tokens:
            return False
        turn = GeneratedTurn(parts[0], array("i", body_ids))
        with self._lock:
            variants = self._entries.pop((digest, key), ())
            kept = (*[v for v in variants if v != turn][-(MAX_VARIANTS - 1) :], turn)
            self._entries[(digest, key)] = kept
            self._num_tokens += _num_ids(kept) - _num_ids(variants)
            self._evict()
        return True

    def bodies(self, messages: Sequence[dict[str, Any]], indices: Iterable[int]) -> dict[int, list[int]]:
        """The generated ids of the assistant messages at `indices` that we remember; a message
        whose reasoning differs from ours, or that matches several generations it cannot tell
        apart, gets none."""
        wanted = sorted(set(indices))
        if not wanted:
            return {}
        digests = _context_digests(messages, wanted[-1])
        found: dict[int, list[int]] = {}
        for i in wanted:
            key, parts = reply_key(messages[i]), _reply_parts(messages[i])
            if digests[i] is None or key is None or parts is None:
                continue
            turn = self._match((digests[i], key), parts[0])
            if turn is not None:
                found[i] = turn.body_ids.tolist()
        return found

    def _match(self, key: tuple[bytes, str], reasoning: str) -> GeneratedTurn | None:
        with self._lock:
            variants = self._entries.get(key, ())
            candidates = [v for v in variants if not reasoning or v.reasoning == reasoning]
            if len({v.body_ids.tobytes() for v in candidates}) != 1:
                return None
            self._entries.move_to_end(key)
            return candidates[-1]

    def _evict(self) -> None:
        while len(self._entries) > self.max_turns or self._num_tokens > self.max_tokens:
            _, variants = self._entries.popitem(last=False)
            self._num_tokens -= _num_ids(variants)


def _num_ids(turns: Iterable[GeneratedTurn]) -> int:
    return sum(len(turn.body_ids) for turn in turns)


def last_query_index(messages: Sequence[dict[str, Any]], markup_in_content: bool = False) -> int | None:
    """The template's last real user query: the latest user message that is not only tool
    responses. Assistant turns after it are rendered with their reasoning, earlier ones without.
    Only with `markup_in_content` (--parse-special-in-content) does the template see a user
    message written as `<tool_response>...</tool_response>` as one; otherwise that text is text.
    None when there is none (the template refuses such a conversation) or a user message's
    content is not text."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") != "user":
            continue
        text = _content_text(messages[i].get("content"))
        if text is None:
            return None
        text = text.strip()
        if not (markup_in_content and text.startswith("<tool_response>") and text.endswith("</tool_response>")):
            return i
    return None


def _content_text(content: Any) -> str | None:
    """Message content as the template renders it: a string, or its text parts joined; None for
    anything else (images, videos, unknown shapes)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        return None
    texts = []
    for part in content:
        text = part.get("text") if isinstance(part, dict) and not _is_media(part) else None
        if not isinstance(text, str):
            return None
        texts.append(text)
    return "".join(texts)


def _is_media(part: dict[str, Any]) -> bool:
    return bool({"image", "image_url", "video"} & part.keys()) or part.get("type") in ("image", "video")


def _reply_parts(message: dict[str, Any]) -> tuple[str, str] | None:
    """(reasoning, content) of an assistant message, both trimmed, split the template's way:
    reasoning from a reasoning field, else from a `<think>...</think>` leading the content."""
    content = _content_text(message.get("content"))
    if content is None:
        return None
    content = content.strip()
    reasoning = next((message[k] for k in _REASONING_ALIASES if message.get(k) is not None), None)
    if isinstance(reasoning, str):
        return reasoning.strip(), content
    if "</think>" in content:
        reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        return reasoning.strip(), content.split("</think>")[-1].lstrip("\n")
    return "", content


def _tool_calls(message: dict[str, Any], with_ids: bool) -> list[list[str]] | None:
    """[[id,] name, canonical arguments] per call; None when the calls cannot be rendered."""
    calls = message.get("tool_calls")
    if not calls:
        return []
    if not isinstance(calls, list):
        return None
    out = []
    for call in calls:
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return None
        arguments = _canonical_arguments(function.get("arguments", {}))
        call_id = call.get("id")
        if arguments is None or (with_ids and not isinstance(call_id, str)):
            return None
        out.append([call_id, function["name"], arguments] if with_ids else [function["name"], arguments])
    return out


def _canonical_arguments(arguments: Any) -> str | None:
    """Arguments (JSON text or an object) as compact JSON in their own key order."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None
    return json.dumps(arguments, **_JSON) if isinstance(arguments, dict) else None


def reply_key(message: dict[str, Any]) -> str | None:
    """What identifies a reply as returned: content and tool calls with their ids."""
    parts, calls = _reply_parts(message), _tool_calls(message, with_ids=True)
    if message.get("role") != "assistant" or parts is None or calls is None:
        return None
    return json.dumps([parts[1], calls], **_JSON)


def _rendered_form(message: dict[str, Any]) -> str | None:
    """What the template renders of a message, reasoning and ids left out (clients drop or
    rename them without changing the conversation)."""
    role = message.get("role")
    if role == "assistant":
        parts, calls = _reply_parts(message), _tool_calls(message, with_ids=False)
        if parts is None or calls is None:
            return None
        return json.dumps([role, parts[1], calls], **_JSON)
    text = _content_text(message.get("content"))
    return None if text is None else json.dumps([role, text.strip()], **_JSON)


def _context_digests(messages: Sequence[dict[str, Any]], count: int) -> list[bytes | None]:
    """digests[i] identifies messages[:i], for i in 0..count; None from the first message that
    cannot be keyed on."""
    running = hashlib.sha256(b"agentd generated turns 1\n")
    digests: list[bytes | None] = [running.digest()]
    for message in messages[:count]:
        form = _rendered_form(message)
        if form is None:
            return digests + [None] * (count + 1 - len(digests))
        running.update(form.encode() + b"\n")  # JSON text never holds a raw newline
        digests.append(running.digest())
    return digests
