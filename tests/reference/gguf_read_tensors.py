#!/usr/bin/env python3
"""Reads every tensor of a GGUF file with gguf-py, for test_gguf_export.

usage: gguf_read_tensors.py FILE.gguf OUT_DIR
Writes OUT_DIR/<tensor name>.f32: the tensor's values as gguf-py's numpy
dequantizer gives them (gguf.quants.dequantize; F32/F16 widened), row-major in
GGUF's own row order, little-endian float32; prints JSON
{name: {"type": TYPE, "ne": [ne0, ne1, ...]}}.
"""
import json
import pathlib
import sys

import numpy as np
import gguf
from gguf import quants


def main() -> int:
    reader = gguf.GGUFReader(sys.argv[1])
    out_dir = pathlib.Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {}
    for t in reader.tensors:
        values = quants.dequantize(t.data, t.tensor_type)
        np.ascontiguousarray(values, dtype="<f4").tofile(out_dir / (t.name + ".f32"))
        info[t.name] = {"type": t.tensor_type.name, "ne": [int(x) for x in t.shape]}
    json.dump(info, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
