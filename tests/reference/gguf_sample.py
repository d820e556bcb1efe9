#!/usr/bin/env python3
"""Writes a small GGUF file with gguf-py's GGUFWriter for test_gguf, plus what
it contains, so the C++ reader can be checked against an independent writer.

usage: gguf_sample.py OUT_DIR
  OUT_DIR/sample.gguf     the file (GGUF v3, general.alignment 64)
  OUT_DIR/sample.json     {"alignment", "metadata": [{key, type, element_type, value}],
                           "tensors": [{name, type, shape (row-major), file}]}
  OUT_DIR/<tensor>.f32    each tensor dequantized by gguf.quants.dequantize

Scalar values are written to the JSON as strings (ints exact, floats as
Python repr) so that 64-bit integers survive JSON parsers that use doubles.
"""
import json
import pathlib
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V
from gguf import quants

QK_K = 256


def text(v):
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, list):
        return [text(x) for x in v]
    return str(v)


def sane_f16(rng, n):
    return rng.uniform(-2.0, 2.0, n).astype(np.float16).view(np.uint8)


# byte offsets of the f16 scale fields inside each block
F16_FIELDS = {
    Q.Q2_K: [80, 82],
    Q.Q3_K: [108],
    Q.Q4_K: [0, 2],
    Q.Q5_K: [0, 2],
    Q.Q6_K: [208],
}


def random_blocks(rng, qtype, rows, cols):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    nblocks = rows * cols // block
    raw = rng.integers(0, 256, (nblocks, size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        raw[:, off:off + 2] = sane_f16(rng, nblocks).reshape(nblocks, 2)
    return raw.reshape(rows, cols // block * size)


def main() -> int:
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    w = gguf.GGUFWriter(str(out / "sample.gguf"), "llama")
    w.add_custom_alignment(64)
    meta = [("general.architecture", "string", "llama", ""), ("general.alignment", "uint32", 64, "")]

    def scalar(key, vtype, value):
        w.add_key_value(key, value, vtype)
        meta.append((key, vtype.name.lower(), value, ""))

    scalar("test.u8", V.UINT8, 200)
    scalar("test.i8", V.INT8, -100)
    scalar("test.u16", V.UINT16, 60000)
    scalar("test.i16", V.INT16, -30000)
    scalar("test.u32", V.UINT32, 4000000000)
    scalar("test.i32", V.INT32, -2000000000)
    scalar("test.u64", V.UINT64, 2**64 - 2)
    scalar("test.i64", V.INT64, -(2**62) - 7)
    scalar("test.f32", V.FLOAT32, float(np.float32(3.14159)))
    scalar("test.f64", V.FLOAT64, 2.718281828459045)
    scalar("test.bool_true", V.BOOL, True)
    scalar("test.bool_false", V.BOOL, False)
    scalar("test.string", V.STRING, "h\u00e9llo \u2713 world")
    scalar("test.empty_string", V.STRING, "")

    def array(key, values, sub):
        w.add_key_value(key, values, V.ARRAY, sub_type=sub)
        meta.append((key, "array", values, sub.name.lower()))

    array("test.arr_i32", [1, -2, 3, -4], V.INT32)
    array("test.arr_u64", [0, 2**63, 2**64 - 1], V.UINT64)
    array("test.arr_f32", [float(np.float32(x)) for x in (0.5, -1.25, 1e-3)], V.FLOAT32)
    array("test.arr_f64", [0.1, -2.5e300], V.FLOAT64)
    array("test.arr_bool", [True, False, True], V.BOOL)
    array("test.arr_str", ["alpha", "", "\u0120gamma"], V.STRING)
    array("test.arr_u8", [0, 7, 255], V.UINT8)
    array("test.arr_i16", [-32768, 32767], V.INT16)
    # arrays of arrays (of strings and of ints)
    array("test.nested_str", [["a", "bc"], ["def"], ["g", "h", "ij"]], V.ARRAY)
    array("test.nested_int", [[1, 2], [3]], V.ARRAY)

    tensors = []

    def add(name, qtype, data_for_file, row_major_shape, raw_dtype=None):
        if raw_dtype is None:
            w.add_tensor(name, data_for_file)
        else:
            w.add_tensor(name, data_for_file, raw_dtype=raw_dtype)
        flat = np.ascontiguousarray(data_for_file).reshape(-1).view(np.uint8)
        values = quants.dequantize(flat, qtype).astype("<f4")
        assert values.size == int(np.prod(row_major_shape))
        fname = name + ".f32"
        values.tofile(out / fname)
        tensors.append({"name": name, "type": qtype.name, "shape": list(row_major_shape),
                        "file": fname})

    a = rng.standard_normal((3, 5)).astype(np.float32)
    add("f32.matrix", Q.F32, a, a.shape)
    b = rng.standard_normal((4, 64)).astype(np.float16)
    add("f16.matrix", Q.F16, b, b.shape)
    c = rng.standard_normal(7).astype(np.float32)
    add("f32.vector", Q.F32, c, c.shape)
    d = rng.standard_normal((2, 3, 4)).astype(np.float32)
    add("f32.cube", Q.F32, d, d.shape)
    e = (rng.standard_normal((2, 32)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    add("bf16.matrix", Q.BF16, e, e.shape, raw_dtype=Q.BF16)
    for qtype in (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1):
        x = rng.standard_normal((3, 64)).astype(np.float32)
        qx = quants.quantize(x, qtype)
        add(qtype.name.lower() + ".matrix", qtype, qx, x.shape, raw_dtype=qtype)
    for qtype in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K):
        raw = random_blocks(rng, qtype, 2, 2 * QK_K)
        add(qtype.name.lower() + ".matrix", qtype, raw, (2, 2 * QK_K), raw_dtype=qtype)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    desc = {
        "alignment": 64,
        "metadata": [{"key": k, "type": t, "element_type": e, "value": text(v)}
                     for k, t, v, e in meta],
        "tensors": tensors,
    }
    (out / "sample.json").write_text(json.dumps(desc, indent=1))
    print(len(tensors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
