"""Encodes a text file with a tokenizer.json through Hugging Face `tokenizers`
(special tokens written in the text are recognised, nothing is added).

usage: tokenizer_file_encode.py TOKENIZER_JSON TEXT_FILE
prints JSON: {"ids": [...], "vocab_size": N}
       tokenizer_file_encode.py --version
prints the version of the `tokenizers` package imported
"""
import json
import sys

from tokenizers import Tokenizer


def main(argv):
    if len(argv) == 2 and argv[1] == "--version":
        import tokenizers
        print(tokenizers.__version__)
        return
    if len(argv) != 3:
        raise SystemExit(__doc__)
    tok = Tokenizer.from_file(argv[1])
    with open(argv[2], encoding="utf-8") as fh:
        text = fh.read()
    ids = tok.encode(text, add_special_tokens=False).ids
    print(json.dumps(dict(ids=ids, vocab_size=tok.get_vocab_size(with_added_tokens=True))))


if __name__ == "__main__":
    main(sys.argv)
