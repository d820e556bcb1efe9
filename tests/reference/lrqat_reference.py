#!/usr/bin/env python3
"""Independent numpy reference for LR-QAT's frozen weights and initial codes.

Written from shared/ALGORITHMS.md ("Uniform grid", "LR-QAT") and the storage
format stated in the test, not from the C++ code:
  min/max grid per unit (tensor, row, or g consecutive elements of a row, the
  last group shorter when g does not divide the row), float32 arithmetic:
    asymmetric: lo = min(min unit, 0), hi = max(max unit, 0), s = (hi - lo)/(n-1)
                (1 if 0), z = clip(round(-lo / s), 0, n-1), qmin = 0, qmax = n-1
    symmetric:  s = max|unit| / (n/2 - 1) (1 if 0), z = 0, qmin = -n/2, qmax = n/2-1
  Phi0 = W / s; f = 8 - bits fractional bits; c = 0 (symmetric) or n/2 (asymmetric);
  stored int8 = clip(round(Phi0 * 2^f) + (z - c) * 2^f, -128, 127);
  Phi0_d = stored / 2^f - (z - c);
  codes at initialisation (A = 0): clip(round(Phi0_d) + z, qmin, qmax);
  plain RTN codes: clip(round(Phi0) + z, qmin, qmax).
np.round rounds halves to even.

Command:
  downcast IN.bin ROWS COLS BITS SYM GRANULARITY GROUP OUTPREFIX
      Reads float32 [ROWS, COLS]; writes OUTPREFIX.stored (int8), .codes and
      .rtn (int32), .values (float32 s (codes - z)), all [ROWS, COLS]. Prints
      JSON: frac_bits, the largest |Phi0 - Phi0_d| among unclamped elements,
      the number of clamped elements, and how many codes differ from RTN.
"""
import json
import sys

import numpy as np

f32 = np.float32


def unit_slices(rows, cols, granularity, group):
    """Yields (row_slice, col_slice) of every quantization unit."""
    if granularity == "per-tensor":
        yield slice(0, rows), slice(0, cols)
    elif granularity == "per-channel":
        for r in range(rows):
            yield slice(r, r + 1), slice(0, cols)
    elif granularity == "per-group":
        for r in range(rows):
            for c0 in range(0, cols, group):
                yield slice(r, r + 1), slice(c0, min(cols, c0 + group))
    else:
        raise SystemExit(f"unknown granularity {granularity}")


def main():
    if len(sys.argv) != 10 or sys.argv[1] != "downcast":
        raise SystemExit(__doc__)
    path, rows, cols, bits, sym, gran, group, prefix = sys.argv[2:]
    rows, cols, bits, group = int(rows), int(cols), int(bits), int(group)
    sym = sym in ("1", "true", "sym")
    w = np.fromfile(path, dtype="<f4").reshape(rows, cols)
    n = 2 ** bits
    qmin, qmax = (-(n // 2), n // 2 - 1) if sym else (0, n - 1)
    s = np.ones_like(w)
    z = np.zeros_like(w)
    for rs, cs in unit_slices(rows, cols, gran, group):
        u = w[rs, cs]
        lo = min(f32(u.min()), f32(0))
        hi = max(f32(u.max()), f32(0))
        if sym:
            step = f32(max(-lo, hi)) / f32(n // 2 - 1)
            step = step if step > 0 else f32(1)
            zero = f32(0)
        else:
            step = f32(f32(hi - lo) / f32(n - 1))
            step = step if step > 0 else f32(1)
            zero = f32(np.clip(np.round(f32(-lo) / step), 0, n - 1))
        s[rs, cs] = step
        z[rs, cs] = zero
    frac = 8 - bits
    unit = f32(2.0 ** frac)
    c = f32(0 if sym else n // 2)
    phi = (w / s).astype(f32)
    raw = np.round(phi * unit) + (z - c) * unit
    stored = np.clip(raw, -128, 127)
    clamped = raw != stored
    stored = stored.astype(np.int8)
    phi_d = (stored.astype(f32) / unit - (z - c)).astype(f32)
    codes = np.clip(np.round(phi_d) + z, qmin, qmax).astype(np.int32)
    rtn = np.clip(np.round(phi) + z, qmin, qmax).astype(np.int32)
    values = ((codes.astype(f32) - z) * s).astype(f32)
    stored.tofile(prefix + ".stored")
    codes.tofile(prefix + ".codes")
    rtn.tofile(prefix + ".rtn")
    values.tofile(prefix + ".values")
    err = np.abs(phi.astype(np.float64) - phi_d.astype(np.float64))[~clamped]
    print(json.dumps({
        "frac_bits": frac,
        "max_downcast_error": float(err.max()) if err.size else 0.0,
        "clamped": int(clamped.sum()),
        "codes_differing_from_rtn": int((codes != rtn).sum()),
    }))


if __name__ == "__main__":
    main()
