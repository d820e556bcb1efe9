#!/usr/bin/env python3
"""Independent numpy reference for GPTQ on one linear layer.

Written from shared/ALGORITHMS.md ("GPTQ") and the GPTQ paper's description
(Frantar et al., 2023, Algorithm 1), without reference to the C++ code, in
float64 and in the plain (non-lazy) form: after each column every later column
is updated at once, where the engine batches the updates per block.
  H = 2/N XᵀX; dead inputs (H_ii = 0): H_ii = 1 and W_:,i = 0;
  act-order: columns by descending diag(H) (stable sort);
  H += damp * mean(diag(H)) I; U = upper Cholesky factor of H⁻¹ (H⁻¹ = UᵀU);
  for each column c in order: q = Q(w_c); e = (w_c - q) / U_cc;
      W_:,j -= e U_cj for all j > c.
Grid (the uniform grid of quant_reference.py, steps in float32): per-tensor and
per-channel steps from the original W; per-group steps (the last group shorter
when g does not divide the columns) computed when column c = k·g is reached,
from W as it stood at the start of c's block of BLOCK columns, which is what
the reference implementation's lazy batches expose at that point.

Command:
  gptq W.bin X.bin OUTPREFIX ROWS COLS N BITS SYM GRANULARITY GROUP BLOCK DAMP ACTORDER
      W float32 [ROWS, COLS], X float32 [N, COLS]. Writes OUTPREFIX.codes
      (int32 [ROWS, COLS], original column order) and OUTPREFIX.values
      (float64 [ROWS, COLS]); prints the output errors ||X Wᵀ - X Ŵᵀ||² / N of
      GPTQ and of round-to-nearest.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant_reference import grid_params  # noqa: E402

f32 = np.float32


def row_params(block, bits, symmetric):
    """Per-row step / zero of a [rows, k] slice (one unit per row), float64 [rows]."""
    s, z = grid_params(block.astype(f32)[:, None, :], bits, symmetric, 1.0)
    return s[:, 0, 0].astype(np.float64), z[:, 0, 0].astype(np.float64)


def quantize(w, s, z, bits, symmetric):
    n = 2 ** bits
    qmin, qmax = (-(n // 2), n // 2 - 1) if symmetric else (0, n - 1)
    q = np.clip(np.round(w / s) + z, qmin, qmax)
    return q, s * (q - z)


def fixed_params(w, bits, symmetric, granularity):
    rows, cols = w.shape
    if granularity == "per-tensor":
        s, z = grid_params(w.astype(f32).reshape(1, 1, -1), bits, symmetric, 1.0)
        return np.full(rows, float(s.ravel()[0])), np.full(rows, float(z.ravel()[0]))
    return row_params(w, bits, symmetric)


def rtn(w, bits, symmetric, granularity, group):
    rows, cols = w.shape
    out = np.zeros_like(w)
    if granularity != "per-group":
        s, z = fixed_params(w, bits, symmetric, granularity)
        return quantize(w, s[:, None], z[:, None], bits, symmetric)[1]
    for c in range(0, cols, group):
        sl = w[:, c:c + group]
        s, z = row_params(sl, bits, symmetric)
        out[:, c:c + group] = quantize(sl, s[:, None], z[:, None], bits, symmetric)[1]
    return out


def cmd_gptq(args):
    (wpath, xpath, prefix, rows, cols, n, bits, sym, gran, group, block, damp, actorder) = args
    rows, cols, n, bits, group, block = map(int, (rows, cols, n, bits, group, block))
    symmetric = sym in ("1", "true")
    damp = float(damp)
    actorder = actorder in ("1", "true")
    w0 = np.fromfile(wpath, dtype="<f4").reshape(rows, cols)
    x = np.fromfile(xpath, dtype="<f4").reshape(n, cols).astype(np.float64)
    h = 2.0 / n * x.T @ x

    W = w0.astype(np.float64).copy()
    if gran != "per-group":
        s_fix, z_fix = fixed_params(w0, bits, symmetric, gran)
    H = h.copy()
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    order = np.argsort(-np.diag(H), kind="stable") if actorder else np.arange(cols)
    W = W[:, order]
    H = H[np.ix_(order, order)]
    H += damp * np.mean(np.diag(H)) * np.eye(cols)
    U = np.linalg.cholesky(np.linalg.inv(H)).T

    codes = np.zeros((rows, cols))
    values = np.zeros((rows, cols))
    snapshot = W.copy()
    s, z = (s_fix, z_fix) if gran != "per-group" else (None, None)
    for c in range(cols):
        if c % block == 0:
            snapshot = W.copy()
        if gran == "per-group" and c % group == 0:
            s, z = row_params(snapshot[:, c:c + group], bits, symmetric)
        w = W[:, c]
        q, v = quantize(w, s, z, bits, symmetric)
        codes[:, c] = q
        values[:, c] = v
        e = (w - v) / U[c, c]
        W[:, c + 1:] -= np.outer(e, U[c, c + 1:])
    inverse = np.argsort(order)
    codes = codes[:, inverse]
    values = values[:, inverse]
    codes.astype("<i4").tofile(prefix + ".codes")
    values.astype("<f8").tofile(prefix + ".values")

    w64 = w0.astype(np.float64)

    def out_err(approx):
        d = x @ (w64 - approx).T
        return float((d ** 2).sum() / n)

    print(json.dumps({"gptq_error": out_err(values),
                      "rtn_error": out_err(rtn(w64, bits, symmetric, gran, group)),
                      "dead": int(dead.sum())}))


def main():
    if len(sys.argv) < 2 or sys.argv[1] != "gptq":
        raise SystemExit(__doc__)
    cmd_gptq(sys.argv[2:])


if __name__ == "__main__":
    main()
