#!/usr/bin/env python3
"""Independent dequantization for test_gguf.

For every <TYPE>.bin in the directory given (raw ggml blocks of that type, as
written by the test), writes <TYPE>.f32: the values gguf-py's numpy
dequantizer (gguf.quants.dequantize) produces, as little-endian float32.
"""
import pathlib
import sys

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants


def main() -> int:
    directory = pathlib.Path(sys.argv[1])
    done = 0
    for path in sorted(directory.glob("*.bin")):
        qtype = GGMLQuantizationType[path.stem]
        raw = np.fromfile(path, dtype=np.uint8)
        values = quants.dequantize(raw, qtype)
        np.ascontiguousarray(values, dtype="<f4").tofile(directory / (path.stem + ".f32"))
        done += 1
    print(done)
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
