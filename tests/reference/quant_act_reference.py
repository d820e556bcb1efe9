#!/usr/bin/env python3
"""Independent numpy reference for activation quantizers installed on a model,
and for SmoothQuant's activation statistics.

Written from shared/ALGORITHMS.md ("Uniform grid", activations; "SmoothQuant")
without reference to the C++ code. It reuses the float64 numpy LLaMA forward of
decoder_reference.py and intercepts its linear layers: per block the calls come
in the order q, k, v, o, gate, up, down, then the LM head.

Activation fake quantization, n = 2**bits levels, asymmetric:
  lo = min(min(x), 0), hi = max(max(x), 0) over a token's row (per-token
  dynamic) or over everything a linear saw during calibration (per-tensor
  static); s = (hi - lo) / (n - 1) (1 if 0); z = round(-lo / s);
  x^ = s (clip(round(x / s) + z, 0, n - 1) - z).
Per-tensor static calibration, block by block: for block b the model runs with
the (frozen) quantizers of blocks < b active and the inputs of block b's linears
observed unquantized; then block b's steps are frozen. KV8: the outputs of
k_proj and v_proj are quantized per token to 8 bits, always.

Commands (print one JSON object on stdout):
  forward DIR NAME MODE BITS KV8 OUT.bin
      Tiny model DIR/NAME.{json,bin} (written by decoder_reference.py tiny);
      MODE none|per-token-dynamic|per-tensor-static, calibrated on the model's
      own tokens; writes the logits for those tokens (float32) to OUT.bin and
      prints the static steps [[block, role, scale, zero], ...].
  normmax DIR NAME OUT.bin
      Per block, max |x| of every channel of the q_proj input and of the
      gate_proj input of the full-precision model on its tokens, float32
      [blocks, 2, hidden].
  sqscales DIR NAME ALPHA OUT.bin
      SmoothQuant scales of the two linear-fed pairs of a LLaMA tiny model, per
      block: v_proj -> o_proj, s per v channel (kv head c, element e) from the
      o_proj input maxima and o_proj column maxima of all query heads that read
      kv head c (max over them), then up_proj -> down_proj from the down_proj
      input maxima and down_proj column maxima; s = max|X|^a / max(max|W|,
      1e-5)^(1-a), clamped >= 1e-5. float32 [blocks, kv_heads*head_dim +
      intermediate].
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import decoder_reference as dr  # noqa: E402

ROLES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_tiny(directory, name):
    meta = json.load(open(os.path.join(directory, name + ".json")))
    blob = np.fromfile(os.path.join(directory, name + ".bin"), dtype="<f4")
    tensors = {}
    for t in meta["tensors"]:
        size = int(np.prod(t["shape"]))
        tensors[t["name"]] = blob[t["offset"]:t["offset"] + size].reshape(t["shape"])
    return meta["config"], tensors, np.array(meta["tokens"], dtype=np.int64)


def fake_quant(x, bits, lo, hi):
    n = 2 ** bits
    s = (hi - lo) / (n - 1)
    s = np.where(s > 0, s, 1.0)
    z = np.clip(np.round(-lo / s), 0, n - 1)
    q = np.clip(np.round(x / s) + z, 0, n - 1)
    return (q - z) * s, s, z


def per_token(x, bits):
    lo = np.minimum(x.min(axis=-1, keepdims=True), 0.0)
    hi = np.maximum(x.max(axis=-1, keepdims=True), 0.0)
    return fake_quant(x, bits, lo, hi)[0]


def run(cfg, tensors, tokens, hook):
    """Forward with every linear call routed through hook(layer, role, x, w, b, lin)."""
    original = dr.lin
    calls = [0]
    layers = cfg["num_layers"]

    def lin(x, w, b=None):
        layer, role = divmod(calls[0], 7)
        calls[0] += 1
        if layer >= layers:  # LM head
            return original(x, w, b)
        return hook(layer, role, x, w, b, original)

    dr.lin = lin
    try:
        return dr.llama_forward(cfg, lambda n: tensors.get(n), tokens)
    finally:
        dr.lin = original


def cmd_forward(args):
    directory, name, mode, bits, kv8, out = args
    bits, kv8 = int(bits), kv8 in ("1", "true")
    cfg, tensors, tokens = load_tiny(directory, name)
    steps = {}  # (layer, role) -> (lo, hi) then frozen
    state = {"calibrating": -1}

    def hook(layer, role, x, w, b, lin):
        if mode == "per-token-dynamic":
            x = per_token(x, bits)
        elif mode == "per-tensor-static":
            key = (layer, role)
            if layer == state["calibrating"]:
                lo, hi = steps.get(key, (0.0, 0.0))
                steps[key] = (min(lo, float(x.min())), max(hi, float(x.max())))
            elif layer < state["calibrating"] or state["calibrating"] < 0:
                lo, hi = steps[key]
                x = fake_quant(x, bits, lo, hi)[0]
        y = lin(x, w, b)
        if kv8 and role in (1, 2):
            y = per_token(y, 8)
        return y

    if mode == "per-tensor-static":
        for layer in range(cfg["num_layers"]):
            state["calibrating"] = layer
            run(cfg, tensors, tokens, hook)
        state["calibrating"] = -1
    logits = run(cfg, tensors, tokens, hook)
    logits.astype("<f4").tofile(out)
    result = []
    for (layer, role), (lo, hi) in sorted(steps.items()):
        _, s, z = fake_quant(np.zeros(1), bits, lo, hi)
        result.append([layer, ROLES[role], float(s), float(z)])
    print(json.dumps({"steps": result, "shape": list(logits.shape)}))


def cmd_normmax(args):
    directory, name, out = args
    cfg, tensors, tokens = load_tiny(directory, name)
    hidden = cfg["hidden"]
    result = np.zeros((cfg["num_layers"], 2, hidden))

    def hook(layer, role, x, w, b, lin):
        if role in (0, 4):
            m = np.abs(x).reshape(-1, hidden).max(axis=0)
            slot = 0 if role == 0 else 1
            result[layer, slot] = np.maximum(result[layer, slot], m)
        return lin(x, w, b)

    run(cfg, tensors, tokens, hook)
    result.astype("<f4").tofile(out)
    print(json.dumps({"blocks": cfg["num_layers"], "hidden": hidden}))


def cmd_sqscales(args):
    directory, name, alpha, out = args
    alpha = float(alpha)
    cfg, tensors, tokens = load_tiny(directory, name)
    H, KV, d = cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]
    layers = cfg["num_layers"]
    o_in = np.zeros((layers, H * d))
    down_in = [None] * layers

    def hook(layer, role, x, w, b, lin):
        m = np.abs(x).reshape(-1, x.shape[-1]).max(axis=0)
        if role == 3:
            o_in[layer] = np.maximum(o_in[layer], m)
        elif role == 6:
            down_in[layer] = m if down_in[layer] is None else np.maximum(down_in[layer], m)
        return lin(x, w, b)

    run(cfg, tensors, tokens, hook)

    def scale(act, wmax):
        return np.maximum(act ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha), 1e-5)

    rows = []
    for i in range(layers):
        p = f"model.layers.{i}."
        wo = np.abs(tensors[p + "self_attn.o_proj.weight"].astype(np.float64)).max(axis=0)
        # query head h reads kv head h // (H // KV)
        act_kv = o_in[i].reshape(KV, H // KV, d).max(axis=1).reshape(-1)
        w_kv = wo.reshape(KV, H // KV, d).max(axis=1).reshape(-1)
        wd = np.abs(tensors[p + "mlp.down_proj.weight"].astype(np.float64)).max(axis=0)
        rows.append(np.concatenate([scale(act_kv, w_kv), scale(down_in[i], wd)]))
    result = np.stack(rows)
    result.astype("<f4").tofile(out)
    print(json.dumps({"blocks": layers, "width": int(result.shape[1])}))


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    {"forward": cmd_forward, "normmax": cmd_normmax, "sqscales": cmd_sqscales}[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
