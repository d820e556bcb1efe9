#!/usr/bin/env python3
"""Describes a GGUF file as gguf-py's GGUFReader sees it, for test_gguf.

usage: gguf_dump.py FILE.gguf  -> JSON on stdout:
  version, alignment, data_offset (absolute),
  metadata: [{key, type, element_type, value}] where value is the scalar as a
            string, or for flat arrays {count, digest}: the SHA-256 of the
            elements re-encoded little-endian in their own type (strings: UTF-8
            bytes each followed by one NUL byte),
  tensors:  [{name, type, ne (GGUF order), offset (absolute), nbytes}]
"""
import hashlib
import json
import sys

import numpy as np
import gguf
from gguf import GGUFValueType as V


def scalar_text(value):
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


def main() -> int:
    reader = gguf.GGUFReader(sys.argv[1])
    metadata = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue  # header pseudo-fields
        main_type = field.types[0]
        entry = {"key": key, "type": main_type.name.lower(), "element_type": ""}
        if main_type == V.ARRAY:
            sub = field.types[-1]
            entry["element_type"] = sub.name.lower() if len(field.types) == 2 else "array"
            digest = hashlib.sha256()
            if sub == V.STRING:
                for idx in field.data:
                    digest.update(field.parts[idx].tobytes() + b"\x00")
            else:
                for idx in field.data:
                    digest.update(np.ascontiguousarray(field.parts[idx]).astype(
                        field.parts[idx].dtype.newbyteorder("<")).tobytes())
            entry["value"] = {"count": len(field.data), "digest": digest.hexdigest()}
        else:
            entry["value"] = scalar_text(field.contents())
        metadata.append(entry)
    tensors = [{
        "name": t.name,
        "type": t.tensor_type.name,
        "ne": [int(x) for x in t.shape],
        "offset": int(t.data_offset),
        "nbytes": int(t.n_bytes),
    } for t in reader.tensors]
    out = {
        "version": int(reader.fields["GGUF.version"].parts[-1][0]),
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "metadata": metadata,
        "tensors": tensors,
    }
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
