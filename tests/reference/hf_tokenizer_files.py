#!/usr/bin/env python3
"""A tiny HF byte-level BPE tokenizer for test_model_loader, built and run with
the Hugging Face `tokenizers` package.

usage: hf_tokenizer_files.py OUT_DIR TEXT [TEXT ...]
Writes OUT_DIR/tokenizer.json and OUT_DIR/tokenizer_config.json and prints
JSON {"vocab_size": N, "ids": [[...] per TEXT]} (no special tokens added).
"""
import json
import os
import sys

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel


def main() -> int:
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    alphabet = ByteLevel.alphabet()  # the 256 byte stand-ins
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("\u0120", "w"), ("o", "r"),
              ("\u0120w", "or"), ("hell", "o")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"add_bos_token": False, "eos_token": "<|endoftext|>",
                   "bos_token": "<|endoftext|>"}, f)
    ids = [tok.encode(text, add_special_tokens=False).ids for text in sys.argv[2:]]
    json.dump({"vocab_size": tok.get_vocab_size(), "ids": ids}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
