#!/usr/bin/env python3
"""Quantizes float32 values with gguf-py's numpy quantizer, for test_gguf_export.

usage: ggml_quantize.py TYPE IN.f32 ROW_LENGTH OUT.bin
Reads IN.f32 (little-endian float32, rows of ROW_LENGTH values), quantizes it
to TYPE (a ggml type name gguf-py can quantize, e.g. Q8_0; gguf-py's Q8_0 is
written to give the bytes of ggml's quantize_row_q8_0_ref) and writes the
blocks to OUT.bin; prints {"bytes": N}.
"""
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType, quants


def main() -> int:
    qtype = GGMLQuantizationType[sys.argv[1]]
    values = np.fromfile(sys.argv[2], dtype="<f4").reshape(-1, int(sys.argv[3]))
    blocks = quants.quantize(values, qtype)
    np.ascontiguousarray(blocks).tofile(sys.argv[4])
    json.dump({"bytes": int(blocks.nbytes)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
