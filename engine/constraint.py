"""Grammar-constrained decoding: an llguidance matcher behind a numpy bool-mask interface.

Grammars are llguidance grammars (Lark text, e.g. from tools/grammar.py, or a JSON grammar spec).
Special tokens such as <tool_call> are written as `<tool_call>` or `<[248058]>` in Lark; text
regexes never match them.
"""

from __future__ import annotations

import llguidance
import llguidance.tiktoken
import numpy as np
import tiktoken

# Token "slices" let llguidance allow whole groups of tokens at once instead of walking each one
# through the lexer. Its defaults suit JSON strings; these add text without `<`, the bulk of a
# raw tool-call value (tools/grammar.py), whose length cap otherwise costs ~4 ms per mask.
_TEXT_SLICES = [r'[^"\\\x00-\x1F\x7F<]{1,10}', r'[^"\\\x00-\x1F\x7F<]{1,30}', r'[^"\\\x00-\x1F\x7F<]+']


class GrammarCompiler:
    """The llguidance view of one tokenizer. Building it walks the whole vocabulary (about 1-2 s
    for Qwen3.5's 248k tokens), so build one per tokenizer and reuse it for every request."""

    def __init__(self, encoding: tiktoken.Encoding, vocab_size: int, eos_id: int) -> None:
        if vocab_size < encoding.n_vocab:
            raise ValueError(f"vocab_size {vocab_size} is below the tokenizer's {encoding.n_vocab} ids")
        if not 0 <= eos_id < encoding.n_vocab:
            raise ValueError(f"eos_id {eos_id} is not a token id of the tokenizer")
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self._token_count = encoding.n_vocab
        self._tokenizer = llguidance.tiktoken.lltokenizer_from_encoding(
            encoding,
            n_vocab=vocab_size,
            eos_token=eos_id,
            slices=_TEXT_SLICES + llguidance.LLTokenizer.general_slices(),
        )

    def matcher(self, grammar: str) -> Constraint:
        """A fresh matcher at the start of `grammar`; ValueError when the grammar does not compile."""
        if not isinstance(grammar, str):
            raise ValueError(f"grammar must be a string, got {type(grammar).__name__}")
        matcher = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"invalid grammar: {matcher.get_error()}")
        return Constraint(matcher, self.vocab_size, self._token_count)


class Constraint:
    """Tracks one generation against a grammar: mask() before each sample, advance() after it."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, token_count: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._token_count = token_count  # ids from here to vocab_size are padding rows of the model
        self._bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)

    def mask(self) -> np.ndarray:
        """Bool [vocab_size]: True for tokens the grammar allows next (EOS when it may end)."""
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        if self._matcher.is_error():
            raise RuntimeError(f"grammar matcher failed: {self._matcher.get_error()}")
        allowed = np.unpackbits(self._bits.view(np.uint8), count=self._vocab_size, bitorder="little")
        allowed = allowed.view(np.bool_)
        allowed[self._token_count :] = False
        return allowed

    def advance(self, token_id: int) -> None:
        """Consume a generated token; ValueError when the grammar does not allow it."""
        if not 0 <= token_id < self._vocab_size:
            raise ValueError(f"token id {token_id} is outside the vocabulary of {self._vocab_size}")
        if token_id >= self._token_count:
            raise ValueError(f"token id {token_id} is padding: the tokenizer has {self._token_count} tokens")
        if not self._matcher.consume_token(int(token_id)):
            raise ValueError(f"token {token_id} is not allowed by the grammar: {self._matcher.get_error()}")

    def is_done(self) -> bool:
        """The grammar is complete and nothing but EOS may follow: stop generating."""
        return self._matcher.is_stopped() and not self._matcher.is_error()

    def can_stop(self) -> bool:
        """EOS is allowed now (the output so far is a complete sentence of the grammar)."""
        return self._matcher.is_accepting()
