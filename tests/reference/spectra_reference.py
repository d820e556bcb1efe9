#!/usr/bin/env python3
"""Independent singular values of one block's linears, for test_run_spectra.

usage: spectra_reference.py MODEL.gguf BLOCK BITS SYMMETRIC GRANULARITY GROUP [EXPORT_DIR ...]

For each of the block's seven linears (q_proj ... down_proj) prints, as JSON
{role: {...}}:
  shape      [out, in]
  W          singular values of W, the weight dequantized from the GGUF with
             gguf-py and put back in the Hugging Face row order (q/k rows are
             reordered per head by llama.cpp's converter; see gguf_unpermute.py)
  E_rtn      singular values of W - RTN(W), RTN written from ALGORITHMS.md in
             quant_reference.py (min/max grid, no clipping search)
  exports    one entry per EXPORT_DIR, in order:
    E          singular values of W - W_exported, W_exported read from the
               Hugging Face export's *.safetensors with a minimal reader
               (struct + json + numpy)
    rtn_dist   ||RTN(W) - W_exported||_F: for an RTN export, how far E_rtn may
               lie from E (Weyl's inequality)
    rtn_mismatches, rtn_mismatches_off_tie
               elements where RTN(W) and W_exported differ, and how many of
               those are not near-ties (W/s within 1e-5 of a half-way point,
               where float noise may round either way)
All singular values by numpy.linalg.svd in float64, descending.
"""
import json
import pathlib
import struct
import sys

import numpy as np
import gguf
from gguf import quants

from gguf_unpermute import to_hf
from quant_reference import apply_grid, as_unit_blocks, grid_params, join_units

ROLES = {
    "q_proj": ("attn_q", "self_attn.q_proj"),
    "k_proj": ("attn_k", "self_attn.k_proj"),
    "v_proj": ("attn_v", "self_attn.v_proj"),
    "o_proj": ("attn_output", "self_attn.o_proj"),
    "gate_proj": ("ffn_gate", "mlp.gate_proj"),
    "up_proj": ("ffn_up", "mlp.up_proj"),
    "down_proj": ("ffn_down", "mlp.down_proj"),
}


def svdvals(m):
    return np.linalg.svd(np.asarray(m, dtype=np.float64), compute_uv=False)


def read_safetensors(directory):
    tensors = {}
    for path in sorted(pathlib.Path(directory).glob("*.safetensors")):
        raw = path.read_bytes()
        (size,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + size])
        base = 8 + size
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            if info["dtype"] != "F32":
                raise SystemExit(f"{path}: {name} is {info['dtype']}, expected F32")
            tensors[name] = np.frombuffer(raw[base + begin:base + end],
                                          dtype="<f4").reshape(info["shape"])
    return tensors


def rtn(w, bits, symmetric, granularity, group):
    """RTN(W) [out, in] and a mask of its near-ties."""
    rows, cols = w.shape
    values, ties = [], []
    for units in as_unit_blocks(w, granularity, group):
        s, z = grid_params(units, bits, symmetric, 1.0)
        _, v = apply_grid(units, s, z, bits, symmetric)
        x = units / s
        values.append(v)
        ties.append(np.abs(x - np.floor(x) - 0.5) < 1e-5)
    return join_units(values, rows, cols, granularity), join_units(ties, rows, cols, granularity)


def main() -> int:
    path, block, bits, sym, gran, group = sys.argv[1:7]
    block, bits, group = int(block), int(bits), int(group)
    symmetric = sym in ("1", "true")
    exports = [read_safetensors(d) for d in sys.argv[7:]]
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    heads = int(reader.fields[arch + ".attention.head_count"].contents())
    kv_heads = int(reader.fields[arch + ".attention.head_count_kv"].contents())
    tensors = {t.name: t for t in reader.tensors}
    out = {}
    for role, (gguf_name, hf_name) in ROLES.items():
        t = tensors[f"blk.{block}.{gguf_name}.weight"]
        ne0, ne1 = int(t.shape[0]), int(t.shape[1])
        w = quants.dequantize(t.data, t.tensor_type).reshape(ne1, ne0).astype(np.float32)
        if role == "q_proj":
            w = to_hf(w, heads)
        elif role == "k_proj":
            w = to_hf(w, kv_heads)
        q, ties = rtn(w, bits, symmetric, gran, group)
        e_rtn = svdvals(w.astype(np.float64) - q.astype(np.float64))
        entry = {"shape": [ne1, ne0], "W": svdvals(w).tolist(), "E_rtn": e_rtn.tolist()}
        entry["exports"] = []
        name = f"model.layers.{block}.{hf_name}.weight"
        for exported in exports:
            if name not in exported:
                raise SystemExit(f"an export has no {name}")
            w_exported = exported[name].astype(np.float64)
            differ = q.astype(np.float64) != w_exported
            entry["exports"].append({
                "E": svdvals(w.astype(np.float64) - w_exported).tolist(),
                "rtn_dist": float(np.linalg.norm(q.astype(np.float64) - w_exported)),
                "rtn_mismatches": int(differ.sum()),
                "rtn_mismatches_off_tie": int((differ & ~ties).sum()),
            })
        out[role] = entry
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
