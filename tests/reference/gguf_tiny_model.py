#!/usr/bin/env python3
"""Tiny GGUF models converted the way llama.cpp's convert_hf_to_gguf.py does,
for test_model_loader.

usage: gguf_tiny_model.py OUT_DIR
Writes, for each variant (llama: GQA with q/k/v/o biases and a SentencePiece
vocabulary; qwen2: q/k/v biases, byte-level BPE vocabulary, no q/k reordering;
gpt2: an architecture the loader must refuse):
  OUT_DIR/<variant>.gguf
  OUT_DIR/<variant>/<hf tensor name>.f32   the HF-layout tensors the GGUF came from
and prints JSON {variant: {"config": {...}, "tensors": [{name, shape, file}]}}.

The HF -> GGUF step follows the converter: q_proj/k_proj weights and biases of
llama models are permuted with reshape(n_head, 2, rows/n_head/2, ...)
.swapaxes(1, 2) (k with the KV head count), names are mapped to llama.cpp's,
and token_embd is stored as F16 (so the HF reference is the F16-rounded value).
"""
import json
import pathlib
import sys

import numpy as np
import gguf

NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def permute(w, n_head, n_head_kv):
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def hf_tensors(rng, cfg, q_bias, o_bias):
    h, ff, v = cfg["hidden"], cfg["ffn"], cfg["vocab"]
    hd = h // cfg["heads"]
    qr, kr = cfg["heads"] * hd, cfg["kv_heads"] * hd
    t = {"model.embed_tokens.weight": rng.standard_normal((v, h)),
         "model.norm.weight": 1 + 0.1 * rng.standard_normal(h)}
    if not cfg["tie"]:
        t["lm_head.weight"] = rng.standard_normal((v, h))
    for i in range(cfg["layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(h)
        t[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(h)
        t[p + "self_attn.q_proj.weight"] = rng.standard_normal((qr, h))
        t[p + "self_attn.k_proj.weight"] = rng.standard_normal((kr, h))
        t[p + "self_attn.v_proj.weight"] = rng.standard_normal((kr, h))
        t[p + "self_attn.o_proj.weight"] = rng.standard_normal((h, qr))
        t[p + "mlp.gate_proj.weight"] = rng.standard_normal((ff, h))
        t[p + "mlp.up_proj.weight"] = rng.standard_normal((ff, h))
        t[p + "mlp.down_proj.weight"] = rng.standard_normal((h, ff))
        if q_bias:
            t[p + "self_attn.q_proj.bias"] = rng.standard_normal(qr)
            t[p + "self_attn.k_proj.bias"] = rng.standard_normal(kr)
            t[p + "self_attn.v_proj.bias"] = rng.standard_normal(kr)
        if o_bias:
            t[p + "self_attn.o_proj.bias"] = rng.standard_normal(h)
    return {k: x.astype(np.float32) for k, x in t.items()}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")  # model.layers.N.<role...>.<kind>
    role = ".".join(parts[3:-1])
    return f"blk.{parts[2]}.{NAMES[role]}.{parts[-1]}"


def spm_vocab(w, vocab):
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += ["\u2581", "a", "b", "\u2581a", "ab"]
    tokens += [f"tok{i}" for i in range(vocab - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259)
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)


def byte_level_vocab(w, vocab):
    # GPT-2's printable stand-ins for the 256 bytes
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    tokens = [chars[b] for b in range(256)] + ["\u0120\u0120", "<|endoftext|>"]
    tokens += [f"tok{i}" for i in range(vocab - len(tokens))]
    types = [1] * 257 + [3] + [1] * (len(tokens) - 258)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["\u0120 \u0120"])
    w.add_bos_token_id(257)
    w.add_eos_token_id(257)


def write_variant(out, rng, variant):
    cfg = {"layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "ffn": 48, "vocab": 300,
           "tie": variant != "llama", "rope_theta": 50000.0, "eps": 1e-6, "context": 512}
    arch = variant
    t = hf_tensors(rng, cfg, q_bias=True, o_bias=variant == "llama")
    w = gguf.GGUFWriter(str(out / f"{variant}.gguf"), arch)
    w.add_block_count(cfg["layers"])
    w.add_context_length(cfg["context"])
    w.add_embedding_length(cfg["hidden"])
    w.add_feed_forward_length(cfg["ffn"])
    w.add_head_count(cfg["heads"])
    w.add_head_count_kv(cfg["kv_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["eps"])
    w.add_rope_dimension_count(cfg["hidden"] // cfg["heads"])
    if variant == "llama":
        spm_vocab(w, cfg["vocab"])
    else:
        byte_level_vocab(w, cfg["vocab"])
    sub = out / variant
    sub.mkdir(parents=True, exist_ok=True)
    listed = []
    for name, x in t.items():
        stored = x
        if variant == "llama" and (".q_proj." in name):
            stored = permute(x, cfg["heads"], cfg["heads"])
        elif variant == "llama" and (".k_proj." in name):
            stored = permute(x, cfg["heads"], cfg["kv_heads"])
        if name == "model.embed_tokens.weight":
            stored = stored.astype(np.float16)
            x = stored.astype(np.float32)
        w.add_tensor(gguf_name(name), np.ascontiguousarray(stored))
        fname = name + ".f32"
        np.ascontiguousarray(x, dtype="<f4").tofile(sub / fname)
        listed.append({"name": name, "gguf_name": gguf_name(name), "shape": list(x.shape),
                       "file": f"{variant}/{fname}"})
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"config": cfg, "tensors": listed}


def main() -> int:
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)
    result = {v: write_variant(out, rng, v) for v in ("llama", "qwen2", "gpt2")}
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
