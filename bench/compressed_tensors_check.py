#!/usr/bin/env python3
"""Decompresses an `lrq quantize --compressed-tensors DIR` export with the
compressed-tensors package itself and compares every quantized weight, bit
for bit, with the independent numpy decoder of the tests
(tests/reference/compressed_tensors_decode.py) and, when given, with the
weights of the run's HF export (`--out HF_DIR`, the Ŵ the run evaluated).

Needs torch, safetensors and compressed-tensors, which the test venv does not
carry (torch is large). In a separate environment:

    python3 -m venv /tmp/ct-venv
    /tmp/ct-venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /tmp/ct-venv/bin/pip install compressed-tensors numpy safetensors
    lrq quantize MODEL --scheme W4A16-g128 --out /tmp/hf --compressed-tensors /tmp/ct
    /tmp/ct-venv/bin/python bench/compressed_tensors_check.py /tmp/ct --hf /tmp/hf

Prints one line per layer and a summary; exits 1 when any weight differs.
Without the package it says so and exits 2.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    try:  # compressed-tensors >= 0.20
        from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    except ImportError:  # earlier releases
        from compressed_tensors.compressors.quantized_compressors.pack_quantized import (
            unpack_from_int32)
    from compressed_tensors.quantization import QuantizationArgs
except ImportError as e:
    print(f"compressed_tensors_check: needs torch, safetensors and compressed-tensors ({e})")
    sys.exit(2)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HERE = os.path.dirname(os.path.abspath(__file__))


def package_decode(ct_dir):
    with open(os.path.join(ct_dir, "config.json")) as f:
        config = json.load(f)
    qc = config["quantization_config"]
    (scheme,) = qc["config_groups"].values()
    args = QuantizationArgs.model_validate(scheme["weights"])  # the package's own validation
    model_dtype = DTYPES[config.get("torch_dtype", "float32")]
    sd = load_file(os.path.join(ct_dir, "model.safetensors"))
    out = {}
    for name in sorted(sd):
        if not name.endswith(".weight_scale"):
            continue
        p = name[: -len(".weight_scale")]
        scale = sd[name]
        zp = sd.get(p + ".weight_zero_point")
        if qc["format"] == "pack-quantized":
            shape = torch.Size(sd[p + ".weight_shape"].tolist())
            q = unpack_from_int32(sd[p + ".weight_packed"], args.num_bits, shape)
            if zp is not None and args.strategy in ("channel", "group"):
                zp = unpack_from_int32(zp, args.num_bits, (shape[0], scale.shape[-1]),
                                       packed_dim=0)
        else:
            q = sd[p + ".weight"]
        w = dequantize(x_q=q, scale=scale, zero_point=zp, args=args)
        out[p] = w.to(model_dtype).to(torch.float32)  # loading into the model's dtype
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ct_dir")
    ap.add_argument("--hf", help="the run's HF export folder (--out), for the evaluated weights")
    a = ap.parse_args()
    ours = package_decode(a.ct_dir)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable,
                        os.path.join(HERE, "..", "tests", "reference",
                                     "compressed_tensors_decode.py"), a.ct_dir, tmp],
                       check=True, stdout=subprocess.DEVNULL)
        numpy_decoded = {p: torch.from_numpy(np.fromfile(os.path.join(tmp, p + ".f32"),
                                                         dtype="<f4").reshape(w.shape))
                         for p, w in ours.items()}
    evaluated = load_file(os.path.join(a.hf, "model.safetensors")) if a.hf else {}
    bad = 0
    for p, w in ours.items():
        same_numpy = torch.equal(w, numpy_decoded[p])
        line = f"{p}: package == numpy decoder: {same_numpy}"
        ok = same_numpy
        if evaluated:
            ref = evaluated[p + ".weight"].to(torch.float32)
            same = torch.equal(w, ref)
            line += f"; == evaluated weight: {same} (max |diff| {float((w - ref).abs().max()):.3g})"
            ok = ok and same
        print(line)
        bad += not ok
    print(f"{len(ours)} layers, {bad} differing")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
