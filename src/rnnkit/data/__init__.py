"""Data layer: tokenizers, plain-text corpora (language modelling) and labelled tables
(classification)."""

from .tables import LabelledData, read_labelled, stratified_split
from .text import decode_utf8, join_docs, load_corpus, read_text_file, split_by_file, stdlib_corpus
from .tokenizers import KINDS, StreamDecoder, Tokenizer, build_tokenizer, tokenizer_from_json

__all__ = [
    "KINDS", "LabelledData", "StreamDecoder", "Tokenizer", "build_tokenizer", "decode_utf8",
    "join_docs", "load_corpus", "read_labelled", "read_text_file", "split_by_file",
    "stdlib_corpus", "stratified_split", "tokenizer_from_json",
]
