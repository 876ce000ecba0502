"""Plain-text corpora: strict reading, folders, stdlib corpus, splits."""

import re

import pytest

from rnnkit.data.text import join_docs, load_corpus, read_text_file, split_by_file, stdlib_corpus


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.txt"))):
        read_text_file(tmp_path / "nope.txt")


def test_empty_file(tmp_path):
    (p := tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.txt is empty"):
        read_text_file(p)


def test_binary_file_with_nul(tmp_path):
    (p := tmp_path / "blob.bin").write_bytes(b"abc\x00def")
    with pytest.raises(ValueError, match=r"blob\.bin is not UTF-8 text: NUL .* byte offset 3$"):
        read_text_file(p)


def test_invalid_utf8_reports_byte_offset(tmp_path):
    (p := tmp_path / "latin1.txt").write_bytes("héllo wörld\n".encode() * 100 + b"caf\xe9 ok")
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8 text: invalid byte 0xe9 "
                                         r"at byte offset 1403$"):
        read_text_file(p)
    (p := tmp_path / "bom_bad.txt").write_bytes(b"\xef\xbb\xbfab\xff")  # offset counts the BOM
    with pytest.raises(ValueError, match="invalid byte 0xff at byte offset 5"):
        read_text_file(p)


def test_bom_stripped_and_newlines(tmp_path):
    (p := tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfhello\r\nworld\n")
    assert read_text_file(p) == "hello\nworld\n"


def make_tree(root):
    files = {"b.txt": "bee", "a/z.txt": "zed", "a/b/c.txt": "sea", "A.txt": "upper",
             ".hidden.txt": "no", ".git/config": "no", "a/empty.txt": ""}
    for name, text in files.items():  # created in a non-sorted order on purpose
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")


def test_load_corpus_folder_is_sorted_and_skips_hidden(tmp_path):
    make_tree(tmp_path)
    docs = load_corpus(tmp_path)
    assert docs == [("A.txt", "upper"), ("a/b/c.txt", "sea"), ("a/z.txt", "zed"), ("b.txt", "bee")]
    assert load_corpus(tmp_path) == docs
    assert load_corpus(tmp_path / "b.txt") == [("b.txt", "bee")]


def test_load_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no .*text files"):
        load_corpus(tmp_path)
    make_tree(tmp_path)
    (tmp_path / "a" / "bad.dat").write_bytes(b"ok\x80")
    with pytest.raises(ValueError, match=r"bad\.dat is not UTF-8 text: invalid byte 0x80 at "
                                         r"byte offset 2"):
        load_corpus(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_corpus(tmp_path / "missing")


def test_stdlib_corpus():
    docs = stdlib_corpus()
    names = [n for n, _ in docs]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert sum(len(t.encode()) for _, t in docs) > 1_000_000
    assert "json/decoder.py" in names and "os.py" in names
    bad = {"test", "tests", "idlelib", "lib2to3", "site-packages"}
    assert not any(bad.intersection(n.split("/")) for n in names)
    assert stdlib_corpus() == docs


def test_stdlib_corpus_capped_is_spread_and_deterministic():
    docs = stdlib_corpus(max_bytes=300_000)
    size = sum(len(t.encode()) for _, t in docs)
    assert 250_000 < size <= 300_000
    assert len({n.split("/")[0][:1].lower() for n, _ in docs}) >= 5  # not just the "a..." files
    assert stdlib_corpus(max_bytes=300_000) == docs


def test_split_by_file():
    docs = [(f"f{i}.txt", f"text {i}") for i in range(30)]
    train, valid = split_by_file(docs, 0.1, seed=0)
    assert len(valid) == 3 and len(train) == 27
    assert sorted(train + valid) == sorted(docs)
    assert split_by_file(docs, 0.1, seed=0) == (train, valid)
    assert train == sorted(train, key=lambda d: int(d[0][1:-4]))  # original order kept
    tr2, va2 = split_by_file(docs[:2], 0.01, seed=3)
    assert len(tr2) == 1 and len(va2) == 1


def test_split_single_document_takes_last_part():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    train, valid = split_by_file([("shakespeare.txt", text)], valid_fraction=0.1)
    assert train == [("shakespeare.txt", text[:900])]
    assert valid == [("shakespeare.txt", text[900:])]
    with pytest.raises(ValueError, match="valid_fraction"):
        split_by_file([("x", "y")], valid_fraction=1.0)
    with pytest.raises(ValueError, match="empty"):
        split_by_file([])


def test_join_docs():
    assert join_docs([("a", "one"), ("b", "two")]) == "one\n\ntwo"
