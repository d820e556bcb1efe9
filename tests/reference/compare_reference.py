"""Independent KL divergence / top-1 agreement / perplexity of a model against
its reference, on the windows perplexity uses (non-overlapping windows of
SEQ_LEN tokens, trailing partial window dropped, position i predicts i+1).

Both models are tiny LLaMA models in the raw format of decoder_reference.py
(NAME.json with config and a tensor index, NAME.bin float32); the forward is
decoder_reference.llama_forward in float64, log-softmax in float64.

usage: compare_reference.py DIR MODEL REFERENCE TOKENS.json SEQ_LEN
prints JSON: mean_kl, max_kl, top1, nll, ref_nll, ppl, ref_ppl, tokens, windows
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decoder_reference import llama_forward  # noqa: E402


def load(directory, name):
    with open(os.path.join(directory, name + ".json")) as fh:
        meta = json.load(fh)
    blob = np.fromfile(os.path.join(directory, name + ".bin"), dtype="<f4")
    tensors = {}
    for t in meta["tensors"]:
        n = int(np.prod(t["shape"]))
        tensors[t["name"]] = blob[t["offset"]:t["offset"] + n].reshape(t["shape"])
    return meta["config"], tensors


def log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def main(argv):
    if len(argv) != 6:
        raise SystemExit(__doc__)
    directory, model, reference, tokens_path, seq_len = argv[1:6]
    seq_len = int(seq_len)
    cfg, mt = load(directory, model)
    rcfg, rt = load(directory, reference)
    with open(tokens_path) as fh:
        tokens = np.asarray(json.load(fh), dtype=np.int64)
    windows = len(tokens) // seq_len
    ids = tokens[:windows * seq_len].reshape(windows, seq_len)
    lp = log_softmax(llama_forward(cfg, lambda n: mt.get(n), ids))[:, :-1]
    lr = log_softmax(llama_forward(rcfg, lambda n: rt.get(n), ids))[:, :-1]
    targets = ids[:, 1:]
    kl = (np.exp(lr) * (lr - lp)).sum(axis=-1)
    top1 = (lp.argmax(-1) == lr.argmax(-1)).mean()
    nll = -np.take_along_axis(lp, targets[..., None], -1).mean()
    ref_nll = -np.take_along_axis(lr, targets[..., None], -1).mean()
    print(json.dumps(dict(mean_kl=float(kl.mean()), max_kl=float(kl.max()), top1=float(top1),
                          nll=float(nll), ref_nll=float(ref_nll), ppl=float(np.exp(nll)),
                          ref_ppl=float(np.exp(ref_nll)), tokens=int(targets.size),
                          windows=int(windows))))


if __name__ == "__main__":
    main(sys.argv)
