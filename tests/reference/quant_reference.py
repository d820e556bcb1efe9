#!/usr/bin/env python3
"""Independent numpy reference for the uniform grids and activation quantizers.

Written from shared/ALGORITHMS.md ("Uniform grid") and the conventions stated
there and in the test, without reference to the C++ code:
  n = 2**bits levels; a quantization unit is the whole tensor, one output row,
  or g consecutive elements of a row (the last group of a row is shorter when g
  does not divide the row length, as GPTQ implementations do).
  asymmetric: lo = min(min(unit), 0), hi = max(max(unit), 0), both times the
              clipping fraction f; s = (hi - lo) / (n - 1) (1 if 0);
              z = round(-lo / s); q = clip(round(w / s) + z, 0, n - 1); w^ = s (q - z)
  symmetric:  a = max|unit| * f; s = a / (n/2 - 1) (1 if 0); z = 0;
              q = clip(round(w / s), -n/2, n/2 - 1); w^ = s q
  symmetric, full range (SYM "full"): s = a / (n/2) (1 if 0); z = -1 when
              max(unit) > -min(unit), else 0; q = clip(round(w / s) + z, -n/2,
              n/2 - 1); w^ = s (q - z): the extreme value sits on level +-n/2.
  clipping search: f in {k / steps, k = steps..1}; per unit keep the f with the
              smallest sum |w - w^|^p (p = 2.4), the first (largest) f on ties.
Step arithmetic is float32 like the engine; error sums are float64.
np.round rounds halves to even.

Commands (print one JSON object on stdout; binary files are raw little-endian):
  round V1 V2 ...
      np.round of each value (checks the half-to-even convention).
  grid IN.bin ROWS COLS BITS SYM GRANULARITY GROUP INIT STEPS NORM OUTPREFIX
      Reads the float32 matrix [ROWS, COLS]; writes OUTPREFIX.codes (int32
      [ROWS, COLS]), .values (float32 [ROWS, COLS]), .scale and .zero (float32,
      one per unit), .fraction (float32, one per unit), .tie (uint8 [ROWS,
      COLS], 1 where w/s lies within 1e-5 of a half-way point, so that float
      noise may decide the rounding), .losses (float64 [units, STEPS], the
      clipping-search error of every fraction, largest fraction first; only for
      clip-search). Prints the min/max error and the chosen error summed over
      units, and the SQNR in dB of w^.
  pertoken IN.bin ROWS COLS BITS OUT.bin
      Per-token (row) dynamic asymmetric fake quantization; OUT.bin.tie marks
      near half-way points as for grid.
  static BITS OUT.bin APPLY.bin ROWS COLS CALIB1.bin CALIB2.bin ...
      Per-tensor static: min/max observed over the calibration files (float32
      of any length), then fake-quantizes APPLY.bin [ROWS, COLS] into OUT.bin
      (and OUT.bin.tie). Prints scale and zero point.
"""
import json
import sys

import numpy as np

f32 = np.float32


def read_matrix(path, rows, cols):
    data = np.fromfile(path, dtype="<f4")
    if data.size != rows * cols:
        raise SystemExit(f"{path}: expected {rows * cols} floats, found {data.size}")
    return data.reshape(rows, cols)


def as_unit_blocks(w, granularity, group):
    """[out, in] -> list of unit blocks [A, B, G] that together tile w column-wise.

    per-tensor: one block [1, 1, out * in]; per-channel: one block [out, 1, in];
    per-group: [out, in // g, g] for the whole groups, plus [out, 1, in % g] for
    a shorter last group when g does not divide in (as GPTQ implementations do).
    Units are numbered row by row: row r's groups, left to right.
    """
    out, cols = w.shape
    if granularity == "per-tensor":
        return [w.reshape(1, 1, out * cols)]
    if granularity == "per-channel":
        return [w.reshape(out, 1, cols)]
    if granularity == "per-group":
        full = cols // group
        blocks = []
        if full:
            blocks.append(w[:, :full * group].reshape(out, full, group))
        if cols % group:
            blocks.append(w[:, full * group:].reshape(out, 1, cols % group))
        return blocks
    raise SystemExit(f"unknown granularity {granularity}")


def join_units(blocks, rows, cols, granularity):
    """Per-element blocks [A, B, G] back to [rows, cols]."""
    if granularity != "per-group":
        return blocks[0].reshape(rows, cols)
    return np.concatenate([b.reshape(rows, -1) for b in blocks], axis=1)


def join_params(blocks, rows, granularity):
    """Per-unit blocks [A, B, ...] to [units, ...] in unit order (row by row)."""
    if granularity != "per-group":
        return blocks[0].reshape(-1, *blocks[0].shape[2:])
    tail = blocks[0].shape[2:]
    return np.concatenate([b.reshape(rows, -1, *tail) for b in blocks], axis=1).reshape(-1, *tail)


def grid_params(units, bits, symmetric, fraction):
    """Step and zero point per unit ([A, B, 1]) for one clipping fraction."""
    n = 2 ** bits
    frac = f32(fraction)
    lo = np.minimum(units.min(axis=2, keepdims=True), f32(0))
    hi = np.maximum(units.max(axis=2, keepdims=True), f32(0))
    if symmetric:
        amax = np.maximum(-lo, hi) * frac
        full = symmetric == "full"
        s = amax / f32(n // 2 if full else n // 2 - 1)
        s = np.where(s > 0, s, f32(1)).astype(f32)
        z = np.where(hi > -lo, f32(-1), f32(0)).astype(f32) if full else np.zeros_like(s)
    else:
        lo_f = lo * frac
        hi_f = hi * frac
        s = (hi_f - lo_f) / f32(n - 1)
        s = np.where(s > 0, s, f32(1)).astype(f32)
        z = np.clip(np.round(-lo_f / s), 0, n - 1).astype(f32)
    return s, z


def apply_grid(units, s, z, bits, symmetric):
    n = 2 ** bits
    qmin, qmax = (-(n // 2), n // 2 - 1) if symmetric else (0, n - 1)
    q = np.clip(np.round(units / s) + z, qmin, qmax).astype(f32)
    return q, ((q - z) * s).astype(f32)


def unit_error(units, values, p):
    e = np.abs(units - values).astype(np.float64)
    return (e ** p).sum(axis=2)  # [A, B]


def cmd_round(args):
    vals = [float(a) for a in args]
    print(json.dumps({"rounded": [float(np.round(np.float64(v))) for v in vals]}))


def grid_block(units, bits, symmetric, init, steps, p):
    """Grid of one unit block [A, B, G]: (s, z, frac, q, v, err, err_mm, losses)."""
    s_mm, z_mm = grid_params(units, bits, symmetric, 1.0)
    _, v_mm = apply_grid(units, s_mm, z_mm, bits, symmetric)
    err_mm = unit_error(units, v_mm, p)
    losses = None
    if init == "minmax":
        s, z = s_mm, z_mm
        frac = np.ones(s.shape, dtype=f32)
        err = err_mm
    elif init == "clip-search":
        # Brute force: every fraction's error for every unit, then argmin over
        # fractions (np.argmin takes the first, i.e. the largest, fraction on ties).
        fractions = [k / steps for k in range(steps, 0, -1)]
        losses = np.stack(
            [unit_error(units, apply_grid(units, *grid_params(units, bits, symmetric, f),
                                          bits, symmetric)[1], p)
             for f in fractions], axis=-1)  # [A, B, F]
        best = np.argmin(losses, axis=-1)  # [A, B]
        s = np.empty(best.shape + (1,), dtype=f32)
        z = np.empty(best.shape + (1,), dtype=f32)
        frac = np.empty(best.shape + (1,), dtype=f32)
        for idx in np.ndindex(best.shape):
            f = fractions[best[idx]]
            s_f, z_f = grid_params(units[idx][None, None, :], bits, symmetric, f)
            s[idx] = s_f[0, 0]
            z[idx] = z_f[0, 0]
            frac[idx] = f32(f)
        err = np.take_along_axis(losses, best[..., None], axis=-1)[..., 0]
    else:
        raise SystemExit(f"unknown init {init}")
    q, v = apply_grid(units, s, z, bits, symmetric)
    return s, z, frac, q, v, err, err_mm, losses, near_tie(units, s)


def cmd_grid(args):
    (path, rows, cols, bits, sym, gran, group, init, steps, norm, prefix) = args
    rows, cols, bits, group, steps = int(rows), int(cols), int(bits), int(group), int(steps)
    symmetric = "full" if sym == "full" else sym in ("1", "true")
    p = float(norm)
    if init == "auto":  # a preset's init, unresolved by any method: min/max (grid.h)
        init = "minmax"
    w = read_matrix(path, rows, cols)
    parts = [grid_block(u, bits, symmetric, init, steps, p)
             for u in as_unit_blocks(w, gran, group)]
    s, z, frac = (join_params([b[i] for b in parts], rows, gran) for i in range(3))
    q, v, tie = (join_units([b[i] for b in parts], rows, cols, gran) for i in (3, 4, 8))
    err = sum(float(b[5].sum()) for b in parts)
    err_mm = sum(float(b[6].sum()) for b in parts)
    if init == "clip-search":
        join_params([b[7] for b in parts], rows, gran).astype("<f8").tofile(prefix + ".losses")

    result = {}
    q.astype("<i4").reshape(rows, cols).tofile(prefix + ".codes")
    v.astype("<f4").reshape(rows, cols).tofile(prefix + ".values")
    s.astype("<f4").reshape(-1).tofile(prefix + ".scale")
    z.astype("<f4").reshape(-1).tofile(prefix + ".zero")
    frac.astype("<f4").reshape(-1).tofile(prefix + ".fraction")
    tie.astype(np.uint8).reshape(rows, cols).tofile(prefix + ".tie")
    w64 = w.astype(np.float64)
    e64 = w64 - v.reshape(rows, cols).astype(np.float64)
    signal, noise = float((w64 ** 2).sum()), float((e64 ** 2).sum())
    result.update({
        "units": int(s.size),
        "minmax_error": err_mm,
        "chosen_error": err,
        "mse": noise / w.size,
        "sqnr_db": 10 * np.log10(signal / noise) if noise > 0 else None,
        "ties": int(tie.sum()),
    })
    print(json.dumps(result))


def near_tie(x, s):
    ratio = x.astype(np.float64) / np.asarray(s, dtype=np.float64)
    return np.abs(np.abs(ratio - np.floor(ratio)) - 0.5) < 1e-5


def token_quant(x, bits, lo, hi, out):
    n = 2 ** bits
    s = (hi - lo) / f32(n - 1)
    s = np.where(s > 0, s, f32(1)).astype(f32)
    z = np.clip(np.round(-lo / s), 0, n - 1).astype(f32)
    q = np.clip(np.round(x / s) + z, 0, n - 1).astype(f32)
    ((q - z) * s).astype("<f4").tofile(out)
    near_tie(x, s).astype(np.uint8).tofile(out + ".tie")
    return s, z


def cmd_pertoken(args):
    path, rows, cols, bits, out = args
    x = read_matrix(path, int(rows), int(cols))
    lo = np.minimum(x.min(axis=1, keepdims=True), f32(0))
    hi = np.maximum(x.max(axis=1, keepdims=True), f32(0))
    token_quant(x, int(bits), lo, hi, out)
    print(json.dumps({"rows": int(rows)}))


def cmd_static(args):
    bits, out, apply_path, rows, cols = args[:5]
    lo, hi = f32(0), f32(0)  # the range always contains 0
    for spec in args[5:]:
        data = np.fromfile(spec, dtype="<f4")
        lo = min(lo, data.min())
        hi = max(hi, data.max())
    x = read_matrix(apply_path, int(rows), int(cols))
    s, z = token_quant(x, int(bits), f32(lo), f32(hi), out)
    print(json.dumps({"scale": float(s), "zero_point": float(z), "min": float(lo),
                      "max": float(hi)}))


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    {"round": cmd_round, "grid": cmd_grid, "pertoken": cmd_pertoken,
     "static": cmd_static}[cmd](args)


if __name__ == "__main__":
    main()
