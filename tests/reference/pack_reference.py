"""Independent implementation of the packed export layout (docs/EXPORT_FORMAT.md).

pack DIR: writes seeded random code matrices and their packed bytes for 2, 3, 4
  and 8 bits (asymmetric and symmetric, column counts that leave partial bytes):
  case_N.codes (int32 LE, row-major), case_N.packed (uint8) and prints the cases
  as JSON: [{name, bits, qmin, rows, cols, row_bytes}].
dequant FILE NAME OUT: reads the packed safetensors file with numpy, unpacks
  NAME.qweight, applies NAME.scales / NAME.zero_points (float32 arithmetic,
  s * (q - z)) and writes the float32 weight to OUT; prints JSON with the
  __metadata__ format fields and the layer entry.

Packing: u = code - qmin; each row is a little-endian bit stream, code j in bits
j*b .. j*b+b-1 (least significant bit first), stream bit k = bit k%8 of byte
k//8, rows padded to whole bytes with zero bits.
"""
import json
import os
import struct
import sys

import numpy as np


def pack_rows(codes, bits, qmin):
    u = (codes.astype(np.int64) - qmin).astype(np.uint8)
    rows, cols = u.shape
    # bit k of code j -> stream position j*bits + k
    bitplanes = ((u[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(rows, cols * bits)
    pad = (-bitplanes.shape[1]) % 8
    bitplanes = np.concatenate([bitplanes, np.zeros((rows, pad), dtype=np.uint8)], axis=1)
    return np.packbits(bitplanes, axis=1, bitorder="little")


def unpack_rows(packed, bits, qmin, cols):
    stream = np.unpackbits(packed, axis=1, bitorder="little")[:, :cols * bits]
    planes = stream.reshape(packed.shape[0], cols, bits).astype(np.int64)
    return (planes << np.arange(bits)).sum(axis=2) + qmin


def cmd_pack(outdir):
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(77)
    cases = []
    for bits in (2, 3, 4, 8):
        for sym in (False, True):
            for rows, cols in ((5, 37), (3, 64), (2, 1)):
                qmin = -(1 << (bits - 1)) if sym else 0
                codes = rng.integers(qmin, qmin + (1 << bits), size=(rows, cols)).astype(np.int32)
                packed = pack_rows(codes, bits, qmin)
                assert (unpack_rows(packed, bits, qmin, cols) == codes).all()
                name = f"case_{len(cases)}"
                codes.astype("<i4").tofile(os.path.join(outdir, name + ".codes"))
                packed.tofile(os.path.join(outdir, name + ".packed"))
                cases.append(dict(name=name, bits=bits, qmin=qmin, rows=rows, cols=cols,
                                  row_bytes=int(packed.shape[1])))
    print(json.dumps(cases))


def read_safetensors(path):
    with open(path, "rb") as fh:
        data = fh.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    dtypes = {"F32": "<f4", "U8": "u1", "F16": "<f2"}

    def tensor(name):
        t = header[name]
        b, e = t["data_offsets"]
        return np.frombuffer(data[base + b:base + e], dtype=dtypes[t["dtype"]]).reshape(t["shape"])

    return header.get("__metadata__", {}), tensor


def cmd_dequant(path, name, out):
    meta, tensor = read_safetensors(path)
    layer = json.loads(meta["layers"])[name]
    bits, qmin, g = layer["bits"], layer["qmin"], layer["group_size"]
    rows, cols = layer["shape"]
    q = unpack_rows(tensor(name + ".qweight"), bits, qmin, cols).astype(np.float32)
    s = tensor(name + ".scales").astype(np.float32)
    z = tensor(name + ".zero_points").astype(np.float32)
    if s.shape[1] != 1:
        idx = np.arange(cols) // g
        s, z = s[:, idx], z[:, idx]
    w = (s * (q - z)).astype(np.float32)
    w.astype("<f4").tofile(out)
    print(json.dumps(dict(format=meta["format"], format_version=meta["format_version"],
                          layer=layer, scheme=json.loads(meta["scheme"]))))


def main(argv):
    if len(argv) == 3 and argv[1] == "pack":
        cmd_pack(argv[2])
    elif len(argv) == 5 and argv[1] == "dequant":
        cmd_dequant(argv[2], argv[3], argv[4])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
