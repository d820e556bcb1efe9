#!/usr/bin/env python3
"""HF-layout q/k projections from a llama GGUF, for test_model_loader.

usage: gguf_unpermute.py FILE.gguf OUT_DIR LAYER [LAYER ...]
For each layer writes OUT_DIR/<layer>.<q|k|v>.f32 (row-major [out, in],
little-endian float32) and prints JSON {"heads", "kv_heads", "head_dim", "files"}.

The tensors are read and dequantized with gguf-py. llama.cpp's converter
reorders q/k rows per head so that rotary pairs are adjacent: HF row
h*D + j*D/2 + i is stored at GGUF row h*D + 2*i + j (j in {0, 1}). Here every
HF row is gathered from its GGUF row by that index formula, and the result is
checked by applying the converter's own reshape/swapaxes permutation to it,
which must reproduce the GGUF tensor exactly.
"""
import json
import pathlib
import sys

import numpy as np
import gguf
from gguf import quants


def field(reader, key):
    return reader.fields[key].contents()


def converter_permute(w, n_head):
    # the forward permutation as convert_hf_to_gguf.py applies it
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def to_hf(gguf_rows, n_head):
    rows = gguf_rows.shape[0]
    d = rows // n_head
    index = np.empty(rows, dtype=np.int64)
    for r in range(rows):
        h, rem = divmod(r, d)
        j, i = divmod(rem, d // 2)
        index[r] = h * d + 2 * i + j
    return gguf_rows[index]


def main() -> int:
    reader = gguf.GGUFReader(sys.argv[1])
    out = pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    layers = [int(x) for x in sys.argv[3:]]
    arch = field(reader, "general.architecture")
    heads = int(field(reader, arch + ".attention.head_count"))
    kv_heads = int(field(reader, arch + ".attention.head_count_kv"))
    tensors = {t.name: t for t in reader.tensors}
    files = []
    for layer in layers:
        for role, n_head in (("q", heads), ("k", kv_heads), ("v", None)):
            t = tensors[f"blk.{layer}.attn_{role}.weight"]
            ne0, ne1 = int(t.shape[0]), int(t.shape[1])
            w = quants.dequantize(t.data, t.tensor_type).reshape(ne1, ne0)
            if n_head is not None:
                hf = to_hf(w, n_head)
                if not np.array_equal(converter_permute(hf, n_head), w):
                    raise SystemExit(f"layer {layer} {role}: inverse permutation check failed")
            else:
                hf = w
            name = f"{layer}.{role}.f32"
            np.ascontiguousarray(hf, dtype="<f4").tofile(out / name)
            files.append({"layer": layer, "role": role, "shape": [ne1, ne0], "file": name})
    head_dim = int(tensors["blk.0.attn_q.weight"].shape[1]) // heads
    json.dump({"heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "files": files},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
