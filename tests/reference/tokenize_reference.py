#!/usr/bin/env python3
"""Independent token ids of a text file for `lrq tokenize`: HF `tokenizers` with the
vocabulary and merges read from the GGUF, BOS prepended when the GGUF asks for it
(as eval_reference.py tokenizes).

usage: tokenize_reference.py MODEL.gguf TEXT.txt
prints JSON: ids, tokens
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tokenizer_reference import build_smollm, read_gguf_vocab  # noqa: E402


def main(argv):
    if len(argv) != 3:
        raise SystemExit(__doc__)
    vocab = read_gguf_vocab(argv[1])
    with open(argv[2], encoding="utf-8") as f:
        text = f.read()
    ids = build_smollm(vocab).encode(text, add_special_tokens=False).ids
    if vocab["add_bos"] and vocab["bos"] >= 0:
        ids = [vocab["bos"]] + ids
    print(json.dumps(dict(ids=ids, tokens=len(ids))))


if __name__ == "__main__":
    main(sys.argv)
