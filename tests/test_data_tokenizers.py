"""Tokenizers: round trips, special ids, unknowns, serialisation, streaming."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.data.tokenizers import KINDS, Tokenizer, build_tokenizer, tokenizer_from_json

TRAIN = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "한국어 문장입니다. 안녕하세요, 세계! 오늘 날씨가 좋네요 ㅋㅋ",
    "def f(x):\n    return x + 1  # comment\n",
] * 3
# every Hangul syllable once: the jamo vocabulary then has every leading/vowel/trailing jamo
ALL_SYLLABLES = "".join(chr(c) for c in range(0xAC00, 0xD7A4))
ASCII = "".join(chr(c) for c in range(32, 127)) + "\n\t"


@pytest.fixture(scope="module")
def toks() -> dict[str, Tokenizer]:
    return {k: build_tokenizer(k, TRAIN, vocab_size=300 if k == "bpe" else None) for k in KINDS}


@pytest.fixture(scope="module")
def full_jamo() -> Tokenizer:
    return build_tokenizer("jamo", [ALL_SYLLABLES, ASCII])


def stream(tok: Tokenizer, ids: list[int]) -> tuple[str, list[str]]:
    """Feed ids one by one; return the full streamed text and the text emitted after each id."""
    dec, out, seen = tok.stream_decoder(), "", []
    for i in ids:
        out += dec.feed(i)
        seen.append(out)
    return out + dec.flush(), seen


@pytest.mark.parametrize("kind", KINDS)
def test_special_ids(toks, kind):
    tok = toks[kind]
    assert (tok.pad_id, tok.unk_id, tok.PAD, tok.UNK) == (0, 1, "<pad>", "<unk>")
    if kind == "bpe":
        assert tok.hf.token_to_id("<pad>") == 0 and tok.hf.token_to_id("<unk>") == 1
    else:
        assert tok.itos[:2] == ["<pad>", "<unk>"]
    ids = tok.encode("Hello 한국어")
    assert 0 not in ids and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode([0, *ids, 0, 0]) == tok.decode(ids)  # pad dropped
    assert tok.decode([1]) == ("<unk>" if kind == "word" else "\ufffd")


def test_char_round_trip_and_unknown(toks):
    tok = toks["char"]
    s = "The quick fox, 한국어!\n"
    assert tok.decode(tok.encode(s)) == s
    assert len(tok.encode(s)) == len(s)
    assert tok.encode("Z€") == [1, 1]  # never seen in training
    assert tok.decode(tok.encode("aZb")) == "a\ufffdb"


def test_char_vocab_order_min_freq_and_cap():
    tok = build_tokenizer("char", ["bbbaaacc d"])
    assert tok.itos == ["<pad>", "<unk>", "a", "b", "c", " ", "d"]  # count desc, ties by char
    assert build_tokenizer("char", ["bbbaaacc d"], min_freq=2).itos[2:] == ["a", "b", "c"]
    assert build_tokenizer("char", ["bbbaaacc d"], vocab_size=4).itos[2:] == ["a", "b"]
    low = build_tokenizer("char", ["AbB"], lowercase=True)
    assert low.itos[2:] == ["b", "a"] and low.encode("ABb") == [3, 2, 2]


def test_jamo_decomposes_and_round_trips(toks, full_jamo):
    tok = toks["jamo"]
    assert len(tok.encode("한")) == 3  # ㅎ + ㅏ + ㄴ as conjoining jamo
    # 11,172 syllables need only 19 + 21 + 27 jamo (+ 96 ASCII chars + 2 specials)
    assert full_jamo.vocab_size == 2 + 19 + 21 + 27 + len(ASCII)
    for s in ["한국어", "안녕하세요, 세계! Hello world. 오늘 ㅋㅋ"]:
        assert tok.decode(tok.encode(s)) == s
    s = "날씨가 좋네요 (fox) 2024? 뷁!\n\tEnd."
    assert full_jamo.decode(full_jamo.encode(s)) == s
    assert tok.decode(tok.encode("2한")) == "\ufffd한"  # unseen digit -> unk


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(ALL_SYLLABLES + ASCII), max_size=40))
def test_jamo_property_round_trip_and_stream(full_jamo, s):
    ids = full_jamo.encode(s)
    assert 1 not in ids
    final = full_jamo.decode(ids)
    assert final == s
    streamed, seen = stream(full_jamo, ids)
    assert streamed == final
    for prefix in seen:  # never emits anything that a later id changes
        assert final.startswith(prefix)


def test_jamo_stream_emits_finished_syllables(full_jamo):
    ids = full_jamo.encode("한국어")  # 3 + 3 + 2 jamo
    _, seen = stream(full_jamo, ids)
    assert seen[:3] == ["", "", ""]  # 한 may still take a trailing consonant / combine
    assert seen[3] == "한"  # next leading consonant starts a new syllable: 한 is final
    assert seen[6] == "한국" and seen[7] == "한국"  # 어 held until flush
    _, seen = stream(full_jamo, full_jamo.encode("가 a"))
    assert "\u1100" not in "".join(seen)  # never a bare leading jamo in the output


def test_word_tokenizer(toks):
    tok = toks["word"]
    assert tok.split("안녕하세요, 세계!") == ["안녕하세요", ",", "세계", "!"]
    ids = tok.encode("Hello, world! zebra")
    assert ids[-1] == 1 and 1 not in ids[:-1]
    assert tok.decode(ids) == "Hello , world ! <unk>"  # joined with spaces (not exact)
    streamed, _ = stream(tok, [0, *ids])
    assert streamed == tok.decode(ids)
    low = build_tokenizer("word", ["The the THE cat"], lowercase=True)
    assert low.itos[2:] == ["the", "cat"] and low.encode("ThE") == [2]


@pytest.mark.parametrize("s", ["Hello, world!", "  two  spaces\tand tab\n", "한국어 문장입니다.",
                               "never seen: Ωmega ü 😀 zebra", "<unk> and <pad> as text"])
def test_bpe_exact_round_trip_no_unknowns(toks, s):
    tok = toks["bpe"]
    ids = tok.encode(s)
    assert 0 not in ids and 1 not in ids  # byte-level: nothing is unknown, specials not parsed
    assert tok.decode(ids) == s
    streamed, seen = stream(tok, ids)
    assert streamed == s
    assert all(s.startswith(p) for p in seen)  # no partial UTF-8 chars emitted as "\ufffd"


def test_bpe_learns_merges_and_vocab_size(toks):
    tok = toks["bpe"]
    assert tok.vocab_size == 300
    assert len(tok.encode("the quick brown fox")) < len("the quick brown fox")
    assert tok.decode([*tok.encode("ab"), 1, *tok.encode("c")]) == "ab\ufffdc"


@pytest.mark.parametrize("kind", KINDS)
def test_json_round_trip(toks, kind):
    tok = toks[kind]
    d = json.loads(json.dumps(tok.to_json()))
    tok2 = tokenizer_from_json(d)
    assert type(tok2) is type(tok) and tok2.vocab_size == tok.vocab_size
    for s in [*TRAIN[:3], "unseen Ωmega 😀 <unk>"]:
        assert tok2.encode(s) == tok.encode(s)
        assert tok2.decode(tok.encode(s)) == tok.decode(tok.encode(s))


@pytest.mark.parametrize("kind", KINDS)
def test_build_is_deterministic(kind):
    a = build_tokenizer(kind, TRAIN, vocab_size=280 if kind == "bpe" else None)
    b = build_tokenizer(kind, TRAIN, vocab_size=280 if kind == "bpe" else None)
    assert a.to_json() == b.to_json()


def test_errors():
    with pytest.raises(ValueError, match="char, jamo, word, bpe"):
        build_tokenizer("sentencepiece", ["x"])
    for kind in KINDS:
        with pytest.raises(ValueError, match="no text"):
            build_tokenizer(kind, [])
    with pytest.raises(ValueError, match="kind"):
        tokenizer_from_json({"itos": ["<pad>", "<unk>"]})
    with pytest.raises(ValueError, match="valid kinds"):
        tokenizer_from_json({"kind": "bytes", "itos": ["<pad>", "<unk>"]})
