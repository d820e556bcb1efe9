#!/usr/bin/env python3
"""Independent decoder of a compressed-tensors directory (numpy + struct + json),
written from the format as the compressed-tensors package publishes it
(PackedQuantizationCompressor / IntQuantizationCompressor, QuantizationArgs,
QuantizationConfig), for test_compressed_tensors.

usage: compressed_tensors_decode.py CT_DIR OUT_DIR

Checks config.json's quantization_config against the published schema
(field names, types and the QuantizationArgs rules), reads model.safetensors
with its own parser, and for every quantized linear P:
  pack-quantized: unpacks P.weight_packed (int32 words, 32 // num_bits values
    per word, value i in bits i*num_bits.., stored unsigned u = c + 2^(b-1))
    to signed codes c, and for asymmetric channel/group weights
    P.weight_zero_point (packed the same way along dim 0);
  int-quantized: P.weight (int8 codes), P.weight_zero_point when asymmetric;
then dequantizes as the package does, (c - z) * s in the scale's dtype
(float32), scale column c // group_size, and rounds the result to config.json's
torch_dtype (what loading into the model does). Writes OUT_DIR/P.f32 (raw
little-endian float32) and prints JSON:
  {"format", "torch_dtype", "layers": {P: {"shape", "strategy", "bits",
   "symmetric", "input_scale", "input_zero_point"}}, "other": [names]}
Any violation raises SystemExit with a message.
"""
import json
import os
import struct
import sys

import numpy as np

DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I8": "i1",
          "U8": "u1"}
ARGS_KEYS = {"num_bits", "type", "symmetric", "group_size", "strategy", "block_structure",
             "dynamic", "actorder", "observer", "observer_kwargs", "scale_dtype", "zp_dtype"}
SCHEME_KEYS = {"targets", "weights", "input_activations", "output_activations", "format"}
CONFIG_KEYS = {"config_groups", "quant_method", "kv_cache_scheme", "format",
               "quantization_status", "global_compression_ratio", "ignore", "sparsity_config",
               "version", "transform_config"}
STRATEGIES = {"tensor", "channel", "group", "block", "token", "tensor_group", "attn_head"}


def fail(msg):
    raise SystemExit("compressed_tensors_decode: " + msg)


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    header.pop("__metadata__", None)
    data = blob[8 + n:]
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype=DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            fail(f"{name}: {arr.size} values for shape {shape}")
        out[name] = (info["dtype"], arr.reshape(shape))
    return out


def check_args(where, a):
    if not isinstance(a, dict):
        fail(f"{where}: not an object")
    extra = set(a) - ARGS_KEYS
    if extra:
        fail(f"{where}: keys the schema forbids: {sorted(extra)}")
    if not isinstance(a.get("num_bits"), int) or isinstance(a.get("num_bits"), bool):
        fail(f"{where}.num_bits: not an integer")
    if a.get("type") not in ("int", "float"):
        fail(f"{where}.type: {a.get('type')}")
    if not isinstance(a.get("symmetric"), bool):
        fail(f"{where}.symmetric: not a boolean")
    strategy, group = a.get("strategy"), a.get("group_size")
    if strategy not in STRATEGIES:
        fail(f"{where}.strategy: {strategy}")
    if strategy == "group" and not (isinstance(group, int) and group > 0):
        fail(f"{where}: strategy group needs a positive group_size")
    if group is not None and group > 0 and strategy not in ("group", "tensor_group"):
        fail(f"{where}: group_size requires strategy group")
    if strategy == "token" and not a.get("dynamic"):
        fail(f"{where}: token strategy must be dynamic")
    if a.get("block_structure") is not None and strategy != "block":
        fail(f"{where}: block_structure without block strategy")
    if not isinstance(a.get("dynamic", False), bool):
        fail(f"{where}.dynamic: not a boolean")


def round_to(values, torch_dtype):
    v = values.astype(np.float32)
    if torch_dtype == "float32":
        return v
    if torch_dtype == "float16":
        return v.astype(np.float16).astype(np.float32)
    if torch_dtype == "bfloat16":  # round to nearest even
        bits = v.view(np.uint32).astype(np.uint64)
        bits = ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16) << 16
        return bits.astype(np.uint32).view(np.float32)
    fail("torch_dtype " + str(torch_dtype))


def unpack(words, bits, count, dim):
    """int32 words -> signed codes; dim 1 packs along columns, dim 0 along rows."""
    per = 32 // bits
    w = words.astype(np.int64) & 0xFFFFFFFF
    if dim == 0:
        w = w.T
    vals = np.stack([(w >> (bits * i)) & ((1 << bits) - 1) for i in range(per)], axis=2)
    vals = vals.reshape(w.shape[0], -1)
    if vals.shape[1] < count or vals.shape[1] - count >= per:
        fail(f"packed length {vals.shape[1]} does not fit {count} values")
    vals = vals[:, :count] - (1 << (bits - 1))
    return vals.T if dim == 0 else vals


def main(argv):
    if len(argv) != 3:
        raise SystemExit(__doc__)
    ct_dir, out_dir = argv[1], argv[2]
    with open(os.path.join(ct_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    qc = config.get("quantization_config")
    if not isinstance(qc, dict):
        fail("config.json has no quantization_config")
    extra = set(qc) - CONFIG_KEYS
    if extra:
        fail(f"quantization_config: unknown keys {sorted(extra)}")
    if qc.get("quant_method") != "compressed-tensors":
        fail("quant_method " + str(qc.get("quant_method")))
    fmt = qc.get("format")
    if fmt not in ("pack-quantized", "int-quantized"):
        fail("format " + str(fmt))
    if qc.get("quantization_status") != "compressed":
        fail("quantization_status " + str(qc.get("quantization_status")))
    if not isinstance(qc.get("ignore"), list):
        fail("ignore is not a list")
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or len(groups) != 1:
        fail("expected one config group")
    (scheme,) = groups.values()
    extra = set(scheme) - SCHEME_KEYS
    if extra:
        fail(f"scheme: unknown keys {sorted(extra)}")
    if scheme.get("targets") != ["Linear"]:
        fail("targets " + str(scheme.get("targets")))
    wargs = scheme.get("weights")
    check_args("weights", wargs)
    iargs = scheme.get("input_activations")
    if iargs is not None:
        check_args("input_activations", iargs)
    if scheme.get("output_activations") is not None:
        fail("output_activations are not expected")
    bits, sym, strategy = wargs["num_bits"], wargs["symmetric"], wargs["strategy"]
    if fmt == "pack-quantized" and (iargs is not None or bits not in (4, 8)):
        fail("pack-quantized holds weight-only int4/int8 schemes")
    torch_dtype = config.get("torch_dtype", "float32")

    tensors = read_safetensors(os.path.join(ct_dir, "model.safetensors"))
    prefixes = sorted(n[: -len(".weight_scale")] for n in tensors if n.endswith(".weight_scale"))
    for ignored in qc["ignore"]:
        if ignored in prefixes:
            fail(f"{ignored} is both ignored and quantized")
    used = set()
    layers = {}
    os.makedirs(out_dir, exist_ok=True)
    for p in prefixes:
        sdt, scale = tensors[p + ".weight_scale"]
        used.add(p + ".weight_scale")
        if sdt not in ("F32", "F16", "BF16"):
            fail(f"{p}.weight_scale dtype {sdt}")
        scale = scale.astype(np.float32) if sdt != "BF16" else (
            scale.astype(np.uint32) << 16).view(np.float32)
        zp = None
        if fmt == "pack-quantized":
            shp_dt, shp = tensors[p + ".weight_shape"]
            pk_dt, words = tensors[p + ".weight_packed"]
            used.update({p + ".weight_shape", p + ".weight_packed"})
            if pk_dt != "I32" or shp_dt not in ("I64", "I32"):
                fail(f"{p}: weight_packed must be I32, weight_shape an integer tensor")
            rows, cols = int(shp[0]), int(shp[1])
            codes = unpack(words, bits, cols, 1)
            if codes.shape[0] != rows:
                fail(f"{p}: weight_packed has {codes.shape[0]} rows, shape says {rows}")
            if not sym:
                zdt, zw = tensors[p + ".weight_zero_point"]
                used.add(p + ".weight_zero_point")
                if strategy in ("channel", "group"):  # packed along the rows
                    if zdt != "I32":
                        fail(f"{p}: packed zero points must be I32")
                    zp = unpack(zw, bits, rows, 0)
                else:
                    if zdt != "I8":
                        fail(f"{p}: a per-tensor zero point must be I8")
                    zp = zw.astype(np.int64).reshape(1, 1)
        else:
            cdt, codes = tensors[p + ".weight"]
            used.add(p + ".weight")
            if cdt != "I8":
                fail(f"{p}: int-quantized weight must be I8")
            codes = codes.astype(np.int64)
            rows, cols = codes.shape
            if not sym:
                zdt, zp = tensors[p + ".weight_zero_point"]
                used.add(p + ".weight_zero_point")
                if zdt != "I8" or zp.shape != scale.shape:
                    fail(f"{p}: weight_zero_point must be I8 shaped like weight_scale")
                zp = zp.astype(np.int64).reshape(-1, 1) if strategy == "tensor" else zp.astype(
                    np.int64)
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        if codes.min() < lo or codes.max() > hi:
            fail(f"{p}: codes outside [{lo}, {hi}]")
        if strategy == "channel":
            expect = (rows, 1)
        elif strategy == "group":
            g = wargs["group_size"]
            if cols % g:
                fail(f"{p}: {cols} columns are not whole groups of {g}")
            expect = (rows, cols // g)
        elif strategy == "tensor":
            expect = (1,)
        else:
            fail("strategy " + strategy)
        if tuple(scale.shape) != expect:
            fail(f"{p}: weight_scale shape {scale.shape}, expected {expect}")
        s2 = scale.reshape(1, 1) if strategy == "tensor" else scale
        col_group = np.arange(cols) // (wargs["group_size"] if strategy == "group" else cols)
        s_full = np.broadcast_to(s2[:, col_group], (rows, cols))
        if zp is not None:
            if zp.shape != s2.shape:
                fail(f"{p}: zero point shape {zp.shape} != scale shape {s2.shape}")
            if zp.min() < lo or zp.max() > hi:
                fail(f"{p}: zero points outside [{lo}, {hi}]")
            z_full = np.broadcast_to(zp[:, col_group], (rows, cols)).astype(np.float32)
        else:
            z_full = np.zeros((rows, cols), np.float32)
        # (c - z) is an exact integer in float32; one float32 product per value.
        w = ((codes.astype(np.float32) - z_full) * s_full).astype(np.float32)
        w = round_to(w, torch_dtype)
        w.astype("<f4").tofile(os.path.join(out_dir, p + ".f32"))
        info = {"shape": [rows, cols], "strategy": strategy, "bits": bits, "symmetric": sym}
        if iargs is not None and not iargs.get("dynamic"):
            sdt2, isc = tensors[p + ".input_scale"]
            used.add(p + ".input_scale")
            info["input_scale"] = float(isc.astype(np.float32).reshape(-1)[0])
            if not iargs["symmetric"]:
                zdt2, izp = tensors[p + ".input_zero_point"]
                used.add(p + ".input_zero_point")
                if zdt2 != "I8":
                    fail(f"{p}: input_zero_point must be I8")
                info["input_zero_point"] = int(izp.reshape(-1)[0])
        layers[p] = info
    other = sorted(set(tensors) - used)
    for n in other:
        if any(n.startswith(p + ".") and not n.endswith(".bias") for p in prefixes):
            fail(f"{n}: unexpected tensor of a quantized layer")
    print(json.dumps({"format": fmt, "torch_dtype": torch_dtype, "layers": layers,
                      "other": other, "ignore": qc["ignore"]}))


if __name__ == "__main__":
    main(sys.argv)
