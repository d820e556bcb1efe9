#!/usr/bin/env python3
"""Independent safetensors writer and reader (struct + json + numpy) for
test_safetensors.

usage:
  safetensors_ref.py write OUT_DIR
      Writes OUT_DIR/ref.safetensors holding F32, F16, BF16, an empty and a
      0-d tensor plus an I64 one, with __metadata__, the JSON keys in an order
      different from the data order. Prints JSON {"metadata", "tensors":
      [{name, dtype, shape, bits}]} where bits are the float32 bit patterns of
      each value (F16 widened by numpy, BF16 by shifting into the top half).
  safetensors_ref.py read FILE
      Parses FILE and prints the same JSON description of its tensors.
"""
import json
import struct
import sys

import numpy as np

SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "F64": 8}


def to_bf16_bits(x):
    # round to nearest even, as torch does
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def float32_bits(dtype, raw, shape):
    if dtype == "F32":
        values = np.frombuffer(raw, dtype="<f4")
    elif dtype == "F16":
        values = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    elif dtype == "BF16":
        values = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        return None
    assert values.size == int(np.prod(shape, dtype=np.int64))
    return [int(b) for b in values.astype(np.float32).view(np.uint32)]


def describe(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {})
    tensors = []
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = info["data_offsets"]
        tensors.append({"name": name, "dtype": info["dtype"], "shape": info["shape"],
                        "bits": float32_bits(info["dtype"], data[begin:end], info["shape"])})
    return {"metadata": meta, "tensors": tensors, "header_len": n}


def write(out_dir):
    rng = np.random.default_rng(99)
    arrays = [
        ("z.bf16", "BF16", to_bf16_bits(rng.standard_normal((2, 3)) * 10)),
        ("a.f32", "F32", rng.standard_normal((3, 4)).astype("<f4")),
        ("m.f16", "F16", (rng.standard_normal(5) * 100).astype("<f2")),
        ("empty", "F32", np.zeros((0, 3), dtype="<f4")),
        ("scalar", "F32", np.array(-7.25, dtype="<f4")),
        ("ids", "I64", np.arange(4, dtype="<i8")),
    ]
    header = {}
    blobs = []
    offset = 0
    for name, dtype, arr in arrays:
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    ordered = {"__metadata__": {"format": "pt", "note": "written by safetensors_ref.py"}}
    for name in sorted(header, reverse=True):  # JSON order differs from data order
        ordered[name] = header[name]
    text = json.dumps(ordered).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    path = out_dir.rstrip("/") + "/ref.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)
    return describe(path)


def main() -> int:
    if sys.argv[1] == "write":
        json.dump(write(sys.argv[2]), sys.stdout)
    elif sys.argv[1] == "read":
        json.dump(describe(sys.argv[2]), sys.stdout)
    else:
        raise SystemExit("usage: safetensors_ref.py write OUT_DIR | read FILE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
