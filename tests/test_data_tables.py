"""Labelled tables: CSV/TSV/JSONL reading, column choice, errors, stratified split."""

from collections import Counter
from pathlib import Path

import pytest

from rnnkit.data.tables import read_labelled, stratified_split

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_csv_multiline_quoted_fields(tmp_path):
    p = write(tmp_path / "d.csv", 'id,text,label\n1,"line one\nline two, with comma",pos\n'
                                  '2,"say ""hi""",neg\n3,plain,pos\n')
    d = read_labelled(p)
    assert d.format == "csv" and d.columns == ["id", "text", "label"]
    assert d.texts == ["line one\nline two, with comma", 'say "hi"', "plain"]
    assert d.labels == ["pos", "neg", "pos"]


def test_tsv_with_header_and_stray_quotes(tmp_path):
    p = write(tmp_path / "r.txt", 'id\tdocument\tlabel\n1\t"so good\t1\n2\tbad "movie\t0\n'
                                  '3\t\t1\n4\t  \t0\n5\t굳 ㅋ\t1\n')
    d = read_labelled(p)
    assert d.format == "tsv" and (d.text_column, d.label_column) == ("document", "label")
    assert d.texts == ['"so good', 'bad "movie', "굳 ㅋ"] and d.labels == ["1", "0", "1"]
    assert d.skipped_empty == 2


def test_tsv_without_header(tmp_path):
    p = write(tmp_path / "sms.tsv", "ham\tGo until jurong point, crazy..\nspam\tFree entry in 2 a "
                                    "wkly comp\nham\tOk lar...\nham\tU dun say so early hor\n")
    d = read_labelled(p)
    assert d.columns == ["0", "1"] and (d.text_column, d.label_column) == ("1", "0")
    assert d.labels == ["ham", "spam", "ham", "ham"] and d.texts[2] == "Ok lar..."
    d2 = read_labelled(p, text_column=1, label_column="0")
    assert (d2.texts, d2.labels) == (d.texts, d.labels)
    d3 = read_labelled(p, header=True)  # forced: first row becomes column names
    assert d3.columns == ["ham", "Go until jurong point, crazy.."] and len(d3) == 3


def test_jsonl(tmp_path):
    p = write(tmp_path / "d.jsonl", '{"sentence": "great", "y": 1}\n\n{"sentence": "awful", "y": 0}'
                                    '\n{"sentence": "", "y": 1}\n')
    d = read_labelled(p)
    assert d.format == "jsonl" and d.columns == ["sentence", "y"]
    assert (d.texts, d.labels, d.skipped_empty) == (["great", "awful"], ["1", "0"], 1)
    write(p, '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c", oops}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl: line 3 is not valid JSON"):
        read_labelled(p)


def test_bom_does_not_break_header(tmp_path):
    d = read_labelled(write(tmp_path / "b.csv", "text,label\nhello,a\nworld,b\n", bom=True))
    assert d.columns == ["text", "label"] and d.texts == ["hello", "world"]


def test_missing_column_lists_columns(tmp_path):
    p = write(tmp_path / "c.csv", "review,stars,user\nnice,5,u1\n")
    with pytest.raises(ValueError, match=r"'sentiment' not found; columns are: 'review', "
                                         r"'stars', 'user'"):
        read_labelled(p, label_column="sentiment")
    with pytest.raises(ValueError, match="columns are"):
        read_labelled(p, text_column=7)
    d = read_labelled(p, label_column="stars")
    assert (d.texts, d.labels) == (["nice"], ["5"])


def test_defaults_without_known_names(tmp_path):
    p = write(tmp_path / "x.csv", "a,b,c\n"  # unknown names: header only if forced
              "k1,this is a long piece of text,pos\nk2,another long piece of text here,neg\n"
              "k3,and yet another long text,pos\n")
    d = read_labelled(p, header=True)
    assert (d.text_column, d.label_column) == ("b", "c")  # longest values, fewest distinct
    assert d.labels == ["pos", "neg", "pos"]


def test_missing_label_names_line(tmp_path):
    p = write(tmp_path / "m.tsv", "text\tlabel\ngood\t1\nbad\t\n")
    with pytest.raises(ValueError, match=r"m\.tsv: line 3 has no label"):
        read_labelled(p)


def test_non_utf8_reports_offset(tmp_path):
    p = tmp_path / "l.csv"
    p.write_bytes(b"text,label\ncaf\xe9,1\n")
    with pytest.raises(ValueError, match=r"l\.csv is not UTF-8 text: invalid byte 0xe9 at "
                                         r"byte offset 14"):
        read_labelled(p)


def test_stratified_split_proportions():
    labels = ["a"] * 100 + ["b"] * 50 + ["c"] * 10 + ["d"] * 2 + ["e"]
    train, test = stratified_split(labels, 0.2, seed=0)
    assert sorted(train + test) == list(range(len(labels))) and not set(train) & set(test)
    assert Counter(labels[i] for i in test) == {"a": 20, "b": 10, "c": 2, "d": 1}
    assert Counter(labels[i] for i in train) == {"a": 80, "b": 40, "c": 8, "d": 1, "e": 1}
    assert stratified_split(labels, 0.2, seed=0) == (train, test)
    assert stratified_split(labels, 0.2, seed=1) != (train, test)
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(labels, 0.0)


NSMC = SHARED / "nsmc" / "ratings_test.txt"
SMS = SHARED / "sms_spam.tsv"


@pytest.mark.skipif(not NSMC.exists(), reason="shared NSMC data not available")
def test_real_nsmc():
    d = read_labelled(NSMC)
    assert d.columns == ["id", "document", "label"] and d.format == "tsv"
    assert len(d) == 49_997 and d.skipped_empty == 3  # 50,000 rows, 3 with empty documents
    assert Counter(d.labels) == {"0": 24_826, "1": 25_171}
    assert d.texts[0] == "굳 ㅋ"


@pytest.mark.skipif(not SMS.exists(), reason="shared SMS spam data not available")
def test_real_sms_spam():
    d = read_labelled(SMS)
    assert d.columns == ["0", "1"] and (d.text_column, d.label_column) == ("1", "0")
    assert len(d) == 5_574 and Counter(d.labels) == {"ham": 4_827, "spam": 747}
    assert d.texts[0].startswith("Go until jurong point")
