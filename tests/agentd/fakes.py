"""A scripted stand-in for engine.Model: byte-level vocabulary, instant, deterministic output.

The real tiny model produces random text; these tests need a model that says exactly what they
script (a reasoning block, a tool call in the Qwen XML format, a stop string) to check parsing,
streaming and scheduling. The fake keeps the engine's surface: `forward(ids, state, last_only)`,
`new_state()`, a tokenizer with a real tiktoken encoding (so llguidance grammars work on it) and
the real chat template.
"""

from __future__ import annotations

import codecs
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tiktoken

from engine.chat_template import DEFAULT_TEMPLATE, ChatTemplate

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>",
            "<tool_response>", "</tool_response>")  # fmt: skip
GENERATION_PROMPTS = ("<think>\n\n</think>\n\n", "<think>\n", "")  # what the template puts after the marker
ASSISTANT = "<|im_start|>assistant\n"
PEAK = 30.0  # logit of the scripted token; the others are 0, so any temperature follows the script


class FakeTokenizer:
    def __init__(self) -> None:
        self.encoding = tiktoken.Encoding(
            name="fake-bytes",
            pat_str=r"""[^\s]+|\s+""",
            mergeable_ranks={bytes([b]): b for b in range(256)},
            special_tokens={text: 256 + i for i, text in enumerate(SPECIALS)},
        )
        self.vocab_size = 256 + len(SPECIALS)
        self.eos_id = self.encoding.encode_single_token("<|im_end|>")
        self.eog_ids = frozenset({self.eos_id, self.encoding.encode_single_token("<|endoftext|>")})

    @property
    def added_texts(self) -> frozenset[str]:
        return frozenset(SPECIALS)

    def encode(self, text: str, literal: tuple[tuple[int, int], ...] = ()) -> list[int]:
        """Byte tokens never merge, so the literal spans can be encoded on their own."""
        ids, at = [], 0
        for start, end in literal:
            ids += self.encoding.encode(text[at:start], allowed_special="all") + self.encode_plain(text[start:end])
            at = end
        return ids + self.encoding.encode(text[at:], allowed_special="all")

    def encode_plain(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def token_bytes(self, token_id: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token_id)

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "FakeStreamDecoder":
        return FakeStreamDecoder(self)


class FakeStreamDecoder:
    def __init__(self, tokenizer: FakeTokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


@dataclass(frozen=True)
class FakeConfig:
    n_vocab: int
    context_length: int


class FakeState:
    def __init__(self) -> None:
        self.position = 0
        self.ids: list[int] = []


Continuation = Callable[[str], str]  # context text -> the text the model should produce next ("" = stop)


def chat_reply(reply: str | Callable[[str], str]) -> Continuation:
    """Answer every chat prompt with `reply` (or reply(prompt text)), then end the turn."""

    def continuation(context: str) -> str:
        head, marker, generated = context.rpartition(ASSISTANT)
        if not marker:
            return ""
        full = reply(head) if callable(reply) else reply
        for prefix in GENERATION_PROMPTS:
            if generated.startswith(prefix) and (prefix + full).startswith(generated):
                return (prefix + full)[len(generated) :]
        return ""

    return continuation


def text_reply(prompt: str, reply: str) -> Continuation:
    """For raw completions of `prompt`: continue with `reply`, then stop."""

    def continuation(context: str) -> str:
        generated = context[len(prompt) :] if context.startswith(prompt) else None
        if generated is None or not reply.startswith(generated):
            return ""
        return reply[len(generated) :]

    return continuation


class FakeModel:
    """Emits the first token of `continuation(context)` with a peaked logit, or EOS when it is "".
    `step_seconds` slows every forward call (to test scheduling and cancellation)."""

    def __init__(self, continuation: Continuation, *, context_length: int = 4096, step_seconds: float = 0.0):
        self.tokenizer = FakeTokenizer()
        self.chat_template = ChatTemplate(DEFAULT_TEMPLATE)
        self.config = FakeConfig(n_vocab=self.tokenizer.vocab_size + 7, context_length=context_length)  # padded
        self.fingerprint = "fake"
        self.continuation = continuation
        self.step_seconds = step_seconds
        self.forward_calls = 0
        self.tokens_consumed = 0
        self.batches: list[list[tuple[int, int]]] = []  # per batched pass: (id of the state, tokens) per row
        self._lock = threading.Lock()

    def new_state(self) -> FakeState:
        return FakeState()

    def forward(self, token_ids: list[int], state: FakeState, last_only: bool = False) -> np.ndarray:
        assert token_ids, "forward needs at least one token"
        with self._lock:
            self.forward_calls += 1
            self.tokens_consumed += len(token_ids)
        if self.step_seconds:
            time.sleep(self.step_seconds)
        state.ids.extend(token_ids)
        state.position += len(token_ids)
        rows = 1 if last_only else len(token_ids)
        return np.tile(self._logits(state.ids), (rows, 1))

    def forward_segments(self, segments: list[list[int]], states: list[FakeState]) -> np.ndarray:
        """One pass for a batch (counted as one call): each segment's last logits."""
        assert len({id(s) for s in states}) == len(states), "a state appears twice in one batch"
        with self._lock:
            self.forward_calls += 1
            self.tokens_consumed += sum(map(len, segments))
            self.batches.append([(id(state), len(tokens)) for tokens, state in zip(segments, states)])
        if self.step_seconds:
            time.sleep(self.step_seconds)
        rows = []
        for tokens, state in zip(segments, states):
            state.ids.extend(tokens)
            state.position += len(tokens)
            rows.append(self._logits(state.ids))
        return np.stack(rows)

    def _logits(self, ids: list[int]) -> np.ndarray:
        logits = np.zeros(self.config.n_vocab, np.float32)
        logits[self._next_token(ids)] = PEAK
        return logits

    def _next_token(self, ids: list[int]) -> int:
        text = self.continuation(self.tokenizer.decode(ids))
        return self.tokenizer.encode(text)[0] if text else self.tokenizer.eos_id
