#!/usr/bin/env python3
"""Independent numpy reference for LQER / L²QER (shared/ALGORITHMS.md,
"LQER / L²QER"; arXiv 2402.02446), written from the specification only.

Activation statistic s of one linear: for every calibration batch, the mean of
|x| over the batch's tokens for each input channel; the running max of that
over the batches; clamped to at least 1e-4; divided by sqrt(min(s) * max(s)).

Commands (print one JSON object on stdout; binary files are raw little-endian):
  stats CHANNELS X1.bin X2.bin ...
      Each file is one calibration batch's inputs, float32 [tokens, CHANNELS]
      (tokens may differ between batches). Prints "batch_max" (the running
      max before clamping), "scale" (normalised) and "tokens".
  svd E.bin OUT IN [S.bin]
      E is float32 [OUT, IN] (the quantization error W - Q(W)); S is float64 [IN]
      (the channel scale; absent: s = 1). Prints "singular_values" of
      diag(s) E^T (descending, float64) and "tail" where tail[k] is
      sqrt(sum_{i >= k} sigma_i^2): the Eckart-Young optimum of a rank-k
      approximation in the Frobenius norm.
"""
import json
import sys

import numpy as np


def stats(args):
    channels = int(args[0])
    batch_means = []
    tokens = 0
    for path in args[1:]:
        x = np.fromfile(path, dtype="<f4").astype(np.float64).reshape(-1, channels)
        tokens += x.shape[0]
        batch_means.append(np.abs(x).mean(axis=0))
    running = batch_means[0]
    for m in batch_means[1:]:
        running = np.maximum(running, m)
    clamped = np.maximum(running, 1e-4)
    scale = clamped / np.sqrt(clamped.min() * clamped.max())
    return {"batch_max": running.tolist(), "scale": scale.tolist(), "tokens": tokens}


def svd(args):
    out_dim, in_dim = int(args[1]), int(args[2])
    e = np.fromfile(args[0], dtype="<f4").astype(np.float64).reshape(out_dim, in_dim)
    m = e.T.copy()
    if len(args) > 3:
        s = np.fromfile(args[3], dtype="<f8").reshape(in_dim)
        m = s[:, None] * m
    sigma = np.linalg.svd(m, compute_uv=False)
    energy = sigma**2
    tail = np.sqrt(np.maximum(np.cumsum(energy[::-1])[::-1], 0.0)).tolist() + [0.0]
    return {"singular_values": sigma.tolist(), "tail": tail}


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "stats":
        result = stats(args)
    elif cmd == "svd":
        result = svd(args)
    else:
        sys.exit("unknown command " + cmd)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
