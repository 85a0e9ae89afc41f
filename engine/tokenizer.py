"""Byte-level BPE tokenizer for Qwen3.5 vocabularies, on tiktoken.

Ids equal the real Qwen3.5 tokenizer's: tiktoken's rank-ordered BPE over the token ids is what
Qwen's own tokenizer runs, added tokens are matched in the text first (as Hugging Face does), and
the text between them is NFC-normalised (HF's normalizer; llama.cpp skips it).
"""

from __future__ import annotations

import bisect
import codecs
import contextlib
import contextvars
import itertools
import re
import threading
import unicodedata
from collections.abc import Iterator, Sequence

import gguf
import regex
import tiktoken

from engine.vocab import Vocab, gpt2_byte_to_unicode

# Pre-tokenizer regexes by tokenizer.ggml.pre. Qwen3.5 added \p{M} (combining marks) to the letter classes.
PRE_TOKENIZER_PATTERNS = {
    "qwen35": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "qwen2": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}
# Pre-tokenizer pieces longer than this many characters (a megabyte "word" with no spaces) are cut
# into chunks this long before BPE, whose cost grows faster than linearly with the piece length.
# Ordinary text has no such piece, so its ids are exactly the reference tokenizer's.
MAX_PIECE_CHARS = 256
# Text is encoded in slices of about this many characters, cut where a pre-tokenizer piece ends
# (after a letter run or a digit, or after a newline that ends a run of whitespace), so the ids
# equal encoding it whole; between slices a cancelled request stops (see cancel_encoding_on).
SLICE_CHARS = 1 << 16
_SLICE_END = regex.compile(r"(?<=[\p{L}\p{M}])(?![\p{L}\p{M}])|(?<=\p{N})|(?<=[\r\n])(?=[^\S\r\n]*\S)")
# A run that can make a piece longer than MAX_PIECE_CHARS (letters, other symbols, whitespace),
# found at the run's start only, so the search stays linear. Slow (~0.2 s/MB): only slices where
# a cheap check finds a long word or whitespace run are searched.
_LONG_WHITESPACE = re.compile(r"\s{%d}" % (MAX_PIECE_CHARS // 2))
_LONG_RUN = regex.compile(
    r"(?<![\p{L}\p{M}])[\p{L}\p{M}]{%d}|(?<![^\s\p{L}\p{M}\p{N}])[^\s\p{L}\p{M}\p{N}]{%d}|(?<!\s)\s{%d}"
    % ((MAX_PIECE_CHARS // 2,) * 3)
)
_CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("encoding_cancel", default=None)


class EncodingCancelled(Exception):
    """Raised inside `cancel_encoding_on(event)` once `event` is set: nobody waits for these ids."""


@contextlib.contextmanager
def cancel_encoding_on(event: threading.Event) -> Iterator[None]:
    """Encoding in this context (this thread, or an asyncio.to_thread copy of it) stops with
    EncodingCancelled at its next slice once `event` is set: a megabyte prompt whose client left
    must not keep a core busy, nor the process from exiting."""
    token = _CANCEL.set(event)
    try:
        yield
    finally:
        _CANCEL.reset(token)


# Texts of added tokens that end generation, besides eos (llama.cpp's end-of-generation rule).
EOG_TEXTS = frozenset({"<|im_end|>", "<|endoftext|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"})

_NORMAL, _UNUSED = int(gguf.TokenType.NORMAL), int(gguf.TokenType.UNUSED)
_ADDED_TYPES = (int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED))
_GPT2_BYTES = str.maketrans({c: chr(b) for b, c in gpt2_byte_to_unicode().items()})
_GPT2_ALPHABET = re.compile("[" + re.escape("".join(gpt2_byte_to_unicode().values())) + "]*")


class TokenizerError(ValueError):
    """A vocabulary the tokenizer cannot use, or ids that are not in it."""


class Tokenizer:
    """Text <-> token ids for a GGUF byte-level BPE vocabulary."""

    def __init__(self, vocab: Vocab):
        if vocab.pre not in PRE_TOKENIZER_PATTERNS:
            raise TokenizerError(
                f"unsupported pre-tokenizer {vocab.pre!r} (supported: {', '.join(PRE_TOKENIZER_PATTERNS)})"
            )
        if len(vocab.token_types) != len(vocab.tokens):
            raise TokenizerError(f"{len(vocab.token_types)} token types for {len(vocab.tokens)} tokens")
        self.vocab_size = len(vocab.tokens)
        self._token_bytes = _token_bytes(vocab)
        added = {
            text: i for i, (text, kind) in enumerate(zip(vocab.tokens, vocab.token_types)) if kind in _ADDED_TYPES
        }
        if "" in added:
            raise TokenizerError(f"added token {added['']} has no text")
        mergeable = {self._token_bytes[i]: i for i, kind in enumerate(vocab.token_types) if kind == _NORMAL}
        if len(mergeable) != vocab.token_types.count(_NORMAL):
            raise TokenizerError("two BPE tokens of the vocabulary spell the same bytes")
        missing = [b for b in range(256) if bytes([b]) not in mergeable]
        if missing:
            raise TokenizerError(
                f"vocabulary lacks single-byte tokens for {len(missing)} byte values, e.g. {missing[0]:#04x}"
            )
        self._pieces = regex.compile(PRE_TOKENIZER_PATTERNS[vocab.pre])
        self.encoding = tiktoken.Encoding(
            name=f"gguf-{vocab.pre}",
            pat_str=PRE_TOKENIZER_PATTERNS[vocab.pre],
            mergeable_ranks=mergeable,
            special_tokens=added,
        )
        self._added = added
        # Longest first, so that of two added tokens starting at the same place the longer wins.
        longest_first = sorted(added, key=len, reverse=True)
        self._added_pattern = re.compile("|".join(map(re.escape, longest_first))) if added else None
        if not 0 <= vocab.eos_id < self.vocab_size:
            raise TokenizerError(f"eos id {vocab.eos_id} is outside the vocabulary of {self.vocab_size}")
        self.eos_id = vocab.eos_id
        self.eog_ids = frozenset({vocab.eos_id, *(i for text, i in added.items() if text in EOG_TEXTS)})

    @property
    def added_texts(self) -> frozenset[str]:
        """The texts of the added tokens (control tokens and the like of `<think>`)."""
        return frozenset(self._added)

    def encode(self, text: str, literal: Sequence[tuple[int, int]] = ()) -> list[int]:
        """Token ids of `text`; added tokens written in the text (e.g. "<|im_start|>") become their
        ids, except inside the `literal` spans ((start, end) character ranges, sorted and disjoint),
        whose text is tokenized as ordinary text together with the text around it."""
        ids: list[int] = []
        start = 0
        for match in self._added_matches(text, literal):
            ids += self.encode_plain(text[start : match.start()])
            ids.append(self._added[match.group()])
            start = match.end()
        ids += self.encode_plain(text[start:])
        return ids

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of `text` with no added tokens: "<|im_end|>" is the ordinary text it spells.
        Linear in the text's length, also for pathological text (see MAX_PIECE_CHARS)."""
        text = unicodedata.normalize("NFC", text)
        cancel = _CANCEL.get()
        ids: list[int] = []
        for part in self._parts(text):
            if cancel is not None and cancel.is_set():
                raise EncodingCancelled("encoding cancelled")
            ids += self.encoding.encode_ordinary(part)
        return ids

    def _parts(self, text: str) -> Iterator[str]:
        """`text` in parts to encode one after the other, with the ids of encoding it whole: slices
        cut where pieces end, and where a piece is over MAX_PIECE_CHARS, that piece in chunks."""
        start = 0
        while start < len(text):
            end = len(text)
            if start + SLICE_CHARS < len(text):
                window_end = start + 2 * SLICE_CHARS  # a search to the end could be as slow as BPE
                cut = _SLICE_END.search(text, start + SLICE_CHARS, window_end)
                if cut is None or cut.start() == window_end < len(text):  # the window's end is no boundary
                    yield from self._piecewise(text, start, len(text))
                    return
                end = cut.start()
            if _may_hold_long_piece(text[start:end]) and _LONG_RUN.search(text, start, end) is not None:
                yield from self._piecewise(text, start, end)
            else:
                yield text[start:end]
            start = end

    def _piecewise(self, text: str, start: int, end: int) -> Iterator[str]:
        """Pre-tokenize text[start:end] here (slower, piece by piece): ordinary pieces in runs of up
        to SLICE_CHARS, each long piece in chunks of MAX_PIECE_CHARS."""
        run = start
        for piece in self._pieces.finditer(text, start, end):
            if piece.end() - piece.start() > MAX_PIECE_CHARS:
                if run < piece.start():
                    yield text[run : piece.start()]
                for at in range(piece.start(), piece.end(), MAX_PIECE_CHARS):
                    yield text[at : min(at + MAX_PIECE_CHARS, piece.end())]
                run = piece.end()
            elif piece.end() - run >= SLICE_CHARS:
                yield text[run : piece.end()]
                run = piece.end()
        if run < end:
            yield text[run:end]

    def _added_matches(self, text: str, literal: Sequence[tuple[int, int]]) -> Iterator[re.Match[str]]:
        if self._added_pattern is None:
            return
        starts = [span[0] for span in literal]
        at = 0
        while match := self._added_pattern.search(text, at):
            before = bisect.bisect_left(starts, match.end()) - 1  # the last span starting inside or before
            if before >= 0 and literal[before][1] > match.start():
                at = match.start() + 1  # text of the request: a later, shorter match may still be structure
                continue
            yield match
            at = match.end()

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (added tokens: their UTF-8 text; unused fillers: nothing)."""
        self._check_id(token_id)
        return self._token_bytes[token_id]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary of {self.vocab_size}")


def _may_hold_long_piece(text: str) -> bool:
    """A piece over MAX_PIECE_CHARS has a run of half that of one kind (letters, symbols or whitespace)."""
    half = MAX_PIECE_CHARS // 2
    return max(map(len, text.split()), default=0) >= half or _LONG_WHITESPACE.search(text) is not None


class StreamDecoder:
    """Incremental detokenizer: text is released only once its characters are complete, so a
    character split across tokens (emoji, CJK) is never emitted half-way."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text completed by this token (possibly "")."""
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """Whatever is still held back: an incomplete trailing character becomes U+FFFD."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


def _token_bytes(vocab: Vocab) -> list[bytes]:
    """Bytes per id: GPT-2 spelling undone for BPE tokens, UTF-8 text for added tokens, b"" for fillers."""
    table: list[bytes] = []
    normal: list[int] = []
    for i, (text, kind) in enumerate(zip(vocab.tokens, vocab.token_types)):
        if kind == _NORMAL:
            normal.append(i)
            table.append(b"")
        elif kind in _ADDED_TYPES:
            table.append(text.encode("utf-8"))
        elif kind == _UNUSED:
            table.append(b"")
        else:
            raise TokenizerError(f"token {i} {text!r} has unsupported type {kind}")
    spelled = [vocab.tokens[i] for i in normal]
    joined = "".join(spelled)
    if not _GPT2_ALPHABET.fullmatch(joined):
        i = next(i for i in normal if not _GPT2_ALPHABET.fullmatch(vocab.tokens[i]))
        raise TokenizerError(f"token {i} {vocab.tokens[i]!r} is not in byte-level BPE (GPT-2) spelling")
    raw = joined.translate(_GPT2_BYTES).encode("latin-1")  # one byte per character
    for i, text, end in zip(normal, spelled, itertools.accumulate(map(len, spelled))):
        table[i] = raw[end - len(text) : end]
    return table
