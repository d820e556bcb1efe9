"""Independent perplexity of a GGUF LLaMA model on a text file.

Tokenizes with the HF `tokenizers` library (vocabulary and merges from the GGUF),
dequantizes with the `gguf` package and runs the numpy forward of
decoder_reference.py; windows follow shared/ALGORITHMS.md (non-overlapping,
seq_len tokens, trailing partial window dropped).

usage: eval_reference.py MODEL.gguf TEXT.txt SEQ_LEN MAX_WINDOWS(0 = all)
prints JSON: perplexity, mean_nll, tokens (predicted), windows, text_tokens
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decoder_reference import GgufModel  # noqa: E402
from tokenizer_reference import build_smollm, read_gguf_vocab  # noqa: E402


def main(argv):
    if len(argv) != 5:
        raise SystemExit(__doc__)
    path, text_path, seq_len, max_windows = argv[1], argv[2], int(argv[3]), int(argv[4])
    vocab = read_gguf_vocab(path)
    tok = build_smollm(vocab)
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    ids = tok.encode(text, add_special_tokens=False).ids
    if vocab["add_bos"] and vocab["bos"] >= 0:
        ids = [vocab["bos"]] + ids
    windows = len(ids) // seq_len
    if max_windows > 0:
        windows = min(windows, max_windows)
    model = GgufModel(path)
    total, count = 0.0, 0
    for w in range(windows):
        window = ids[w * seq_len:(w + 1) * seq_len]
        logits = model.logits(window)[:-1].astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=-1))
        nll = lse - logits[np.arange(seq_len - 1), window[1:]]
        total += float(nll.sum())
        count += seq_len - 1
    print(json.dumps(dict(perplexity=float(np.exp(total / count)), mean_nll=total / count,
                          tokens=count, windows=windows, text_tokens=len(ids))))


if __name__ == "__main__":
    main(sys.argv)
