#!/usr/bin/env python3
"""Writes the seed corpora for the fuzz targets: small valid files of every
format, written byte by byte here (standard library only), so a fresh clone
needs nothing else. Usage: make_seeds.py OUT_DIR (one folder per target)."""
import json
import os
import random
import struct
import sys

rng = random.Random(1234)  # the same seeds on every machine


def gguf_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
          BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}


def gguf_value(t, v):
    if t == STR:
        return gguf_string(v)
    if t == ARR:
        et, items = v
        out = struct.pack("<IQ", et, len(items))
        return out + b"".join(gguf_value(et, x) for x in items)
    return struct.pack(SCALAR[t], v)


# ggml type number -> (values per block, bytes per block)
GGML = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
        10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
        30: (1, 2), 20: (32, 18), 26: (1, 4)}


def gguf_file(metadata, tensors, version=3, alignment=32):
    """metadata: [(key, type, value)]; tensors: [(name, dims, ggml_type, data bytes or None)]."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for key, t, v in metadata:
        head += gguf_string(key) + struct.pack("<I", t) + gguf_value(t, v)
    infos, blobs, offset = b"", [], 0
    for name, dims, gtype, data in tensors:
        block, size = GGML[gtype]
        n = 1
        for d in dims:
            n *= d
        nbytes = n // block * size
        if data is None:
            data = bytes(rng.getrandbits(8) for _ in range(nbytes))
        infos += gguf_string(name) + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", gtype, offset)
        pad = (-nbytes) % alignment
        blobs.append(data + b"\0" * pad)
        offset += nbytes + pad
    out = head + infos
    out += b"\0" * ((-len(out)) % alignment)
    return out + b"".join(blobs)


def f16_bits(x):
    return struct.pack("<e", x)


def byte_level_alphabet():
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, extra = {}, 256
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(extra)
            extra += 1
    return table


def small_byte_level_vocab():
    alphabet = byte_level_alphabet()
    tokens = [alphabet[b] for b in range(256)]
    merges = []
    for a, b in [("t", "h"), ("th", "e"), ("i", "n"), ("in", "g"), ("\u0120", "the"), ("e", "r")]:
        merges.append(a + " " + b)
        tokens.append(a + b)
    tokens.append("<|endoftext|>")
    return tokens, merges


def gguf_seeds():
    seeds = {}
    md = [("general.architecture", STR, "test"), ("general.alignment", U32, 32),
          ("test.u8", U8, 7), ("test.i8", I8, -3), ("test.u16", U16, 500), ("test.i16", I16, -500),
          ("test.u32", U32, 1 << 20), ("test.i32", I32, -(1 << 20)), ("test.f32", F32, 0.5),
          ("test.bool", BOOL, True), ("test.u64", U64, 1 << 40), ("test.i64", I64, -(1 << 40)),
          ("test.f64", F64, 1e-6), ("test.str", STR, "caf\u00e9"),
          ("test.arr_i32", ARR, (I32, [1, 2, 3])), ("test.arr_f32", ARR, (F32, [0.25, -1.0])),
          ("test.arr_str", ARR, (STR, ["a", "bc"])), ("test.arr_bool", ARR, (BOOL, [True, False])),
          ("test.nested", ARR, (ARR, [(U8, [1, 2]), (STR, ["x"])]))]
    tensors = [("t.%d" % t, [GGML[t][0] * 2, 2] if GGML[t][0] > 1 else [3, 2], t, None)
               for t in sorted(GGML)]
    tensors.append(("t.empty", [0, 4], 0, b""))
    seeds["types.gguf"] = gguf_file(md, tensors)
    seeds["v2.gguf"] = gguf_file([("general.name", STR, "v2")],
                                 [("w", [4], 1, b"".join(f16_bits(x) for x in (1, -2, 0.5, 0)))],
                                 version=2)
    seeds["empty.gguf"] = gguf_file([], [])

    tokens, merges = small_byte_level_vocab()
    hidden, vocab = 8, len(tokens)
    llama = [("general.architecture", STR, "llama"), ("llama.block_count", U32, 1),
             ("llama.embedding_length", U32, hidden), ("llama.feed_forward_length", U32, 16),
             ("llama.attention.head_count", U32, 2), ("llama.attention.head_count_kv", U32, 1),
             ("llama.context_length", U32, 64), ("llama.rope.freq_base", F32, 10000.0),
             ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
             ("tokenizer.ggml.model", STR, "gpt2"), ("tokenizer.ggml.pre", STR, "smollm"),
             ("tokenizer.ggml.tokens", ARR, (STR, tokens)),
             ("tokenizer.ggml.token_type", ARR, (I32, [1] * (vocab - 1) + [3])),
             ("tokenizer.ggml.merges", ARR, (STR, merges)),
             ("tokenizer.ggml.bos_token_id", U32, vocab - 1),
             ("tokenizer.ggml.eos_token_id", U32, vocab - 1)]
    model_tensors = [("token_embd.weight", [hidden, vocab], 0, None),
                     ("blk.0.attn_q.weight", [hidden, hidden], 0, None),
                     ("output_norm.weight", [hidden], 0, None)]
    seeds["llama-gpt2.gguf"] = gguf_file(llama, model_tensors)

    spm_tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    spm_tokens += ["\u2581", "a", "b", "\u2581a", "ab"]
    spm = [kv for kv in llama if not kv[0].startswith("tokenizer.")]
    spm[0] = ("general.architecture", STR, "qwen2")
    spm = [(k.replace("llama.", "qwen2."), t, v) for k, t, v in spm]
    spm += [("tokenizer.ggml.model", STR, "llama"),
            ("tokenizer.ggml.tokens", ARR, (STR, spm_tokens)),
            ("tokenizer.ggml.scores", ARR, (F32, [0.0] * 3 + [-100.0] * 256 + [-1, -2, -3, -4, -5])),
            ("tokenizer.ggml.token_type", ARR, (I32, [2, 3, 3] + [6] * 256 + [1] * 5)),
            ("tokenizer.ggml.bos_token_id", U32, 1), ("tokenizer.ggml.eos_token_id", U32, 2),
            ("tokenizer.ggml.unknown_token_id", U32, 0),
            ("tokenizer.ggml.add_bos_token", BOOL, True)]
    seeds["qwen2-spm.gguf"] = gguf_file(
        spm, [("token_embd.weight", [hidden, len(spm_tokens)], 8 if False else 0, None)])
    return seeds


def safetensors_file(tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, size in tensors:
        n = 1
        for d in shape:
            n *= d
        nbytes = n * size
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        blobs.append(bytes(rng.getrandbits(8) for _ in range(nbytes)))
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((-len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def safetensors_seeds():
    return {
        "mixed.safetensors": safetensors_file(
            [("model.embed_tokens.weight", "F32", [4, 2], 4), ("a.bias", "F16", [3], 2),
             ("b", "BF16", [2, 2], 2), ("ids", "I64", [2], 8), ("empty", "F32", [0, 3], 4)],
            {"format": "pt"}),
        "one.safetensors": safetensors_file([("x", "F32", [1], 4)]),
        "empty.safetensors": safetensors_file([]),
    }


def pack_row(codes, bits, qmin):
    """One row of the packed format: u = q - qmin, LSB first into a little-endian
    bit stream (docs/EXPORT_FORMAT.md, section 2)."""
    out = bytearray((len(codes) * bits + 7) // 8)
    for j, q in enumerate(codes):
        u = q - qmin
        for b in range(bits):
            k = j * bits + b
            out[k // 8] |= ((u >> b) & 1) << (k % 8)
    return bytes(out)


def packed_file(layers, scheme, method="rtn"):
    """layers: dicts with name, bits, symmetric, group_size (0: per channel, -1: per
    tensor), shape (out, in), and optional low_rank k, value_dtype, full_range,
    scale_dtype."""
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 16,
              "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 32,
              "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True}
    header, blobs, offset, meta_layers = {}, [], 0, {}

    def add(name, dtype, shape, data):
        nonlocal offset
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)

    def floats(values, dtype="F32"):
        if dtype == "F16":
            return b"".join(struct.pack("<e", v) for v in values)
        return b"".join(struct.pack("<f", v) for v in values)

    add("model.norm.weight", "F32", [8], floats([1.0] * 8))
    for l in layers:
        bits, (out, inp), g = l["bits"], l["shape"], l["group_size"]
        qmin = -(1 << (bits - 1)) if l["symmetric"] else 0
        levels = 1 << bits
        rows, groups = (1, 1) if g < 0 else (out, 1 if g == 0 else -(-inp // g))
        codes = [[qmin + rng.randrange(levels) for _ in range(inp)] for _ in range(out)]
        steps = [rng.choice([0.5, 0.25, 0.125, 0.0625]) * (1 + rng.randrange(4))
                 for _ in range(rows * groups)]
        if not l["symmetric"]:
            zeros = [float(rng.randrange(levels)) for _ in range(rows * groups)]
        elif l.get("full_range"):
            zeros = [float(-rng.randrange(2)) for _ in range(rows * groups)]
        else:
            zeros = [0.0] * (rows * groups)
        sd = l.get("scale_dtype", "F32")
        add(l["name"] + ".qweight", "U8", [out, (inp * bits + 7) // 8],
            b"".join(pack_row(row, bits, qmin) for row in codes))
        add(l["name"] + ".scales", sd, [rows, groups], floats(steps, sd))
        add(l["name"] + ".zero_points", sd, [rows, groups], floats(zeros, sd))
        entry = {"bits": bits, "qmin": qmin, "group_size": max(g, 0) if groups > 1 else 0,
                 "shape": [out, inp], "low_rank": l.get("low_rank", 0)}
        if l.get("low_rank"):
            k = l["low_rank"]
            add(l["name"] + ".low_rank_a", "F32", [inp, k],
                floats([rng.uniform(-0.1, 0.1) for _ in range(inp * k)]))
            add(l["name"] + ".low_rank_b", "F32", [k, out],
                floats([rng.uniform(-0.1, 0.1) for _ in range(k * out)]))
        if l.get("value_dtype"):
            entry["value_dtype"] = l["value_dtype"]
        meta_layers[l["name"]] = entry
    header["__metadata__"] = {
        "format": "lrq-packed", "format_version": "1", "config": json.dumps(config),
        "scheme": json.dumps(scheme), "method": method,
        "layers": json.dumps(meta_layers), "metadata": "{}"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((-len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def packed_seeds():
    q, k, up = ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                "model.layers.0.mlp.up_proj")

    def scheme(bits, symmetric, granularity, group_size=0):
        w = {"bits": bits, "symmetric": symmetric, "granularity": granularity}
        if group_size:
            w["group_size"] = group_size
        return {"weight": w}

    return {
        "w4-sym-per-channel.safetensors": packed_file(
            [dict(name=q, bits=4, symmetric=True, group_size=0, shape=(8, 8)),
             dict(name=up, bits=4, symmetric=True, group_size=0, shape=(16, 8))],
            scheme(4, True, "per_channel")),
        "w3-asym-per-group.safetensors": packed_file(
            [dict(name=q, bits=3, symmetric=False, group_size=3, shape=(4, 8))],
            scheme(3, False, "per_group", 3)),
        "w4-full-range-g16.safetensors": packed_file(
            [dict(name=up, bits=4, symmetric=True, group_size=16, shape=(4, 40),
                  full_range=True)],
            {"name": "gguf-q4_0", "weight": {"bits": 4, "symmetric": True,
                                             "granularity": "per_group", "group_size": 16,
                                             "full_range": True}}),
        "w2-per-tensor-bf16.safetensors": packed_file(
            [dict(name=k, bits=2, symmetric=True, group_size=-1, shape=(8, 8),
                  value_dtype="BF16")],
            scheme(2, True, "per_tensor")),
        "w8-asym-low-rank.safetensors": packed_file(
            [dict(name=q, bits=8, symmetric=False, group_size=0, shape=(8, 8), low_rank=2),
             dict(name=k, bits=8, symmetric=False, group_size=0, shape=(4, 8), low_rank=1,
                  value_dtype="F16", scale_dtype="F16")],
            scheme(8, False, "per_channel"), method="lqer"),
        "w5-mixed-no-scheme.safetensors": packed_file(
            [dict(name=q, bits=5, symmetric=True, group_size=0, shape=(3, 7)),
             dict(name=up, bits=6, symmetric=False, group_size=4, shape=(2, 9))], {}),
    }


def config_seeds():
    llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000,
             "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
             "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
             "bos_token_id": 1, "eos_token_id": 2, "rope_scaling": None, "hidden_act": "silu"}
    mistral = dict(llama, architectures=["MistralForCausalLM"], model_type="mistral",
                   sliding_window=None)
    qwen2 = dict(llama, architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                 tie_word_embeddings=True, eos_token_id=[2, 3])
    opt = {"architectures": ["OPTForCausalLM"], "model_type": "opt", "vocab_size": 50272,
           "hidden_size": 64, "ffn_dim": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
           "max_position_embeddings": 256, "do_layer_norm_before": True,
           "word_embed_proj_dim": 64, "activation_function": "relu", "bos_token_id": 2,
           "eos_token_id": 2, "enable_bias": True}
    return {n + ".json": json.dumps(c, indent=1).encode()
            for n, c in [("llama", llama), ("mistral", mistral), ("qwen2", qwen2), ("opt", opt)]}


def tokenizer_json_seeds():
    tokens, merges = small_byte_level_vocab()
    vocab = {t: i for i, t in enumerate(tokens)}
    byte_level = {
        "version": "1.0",
        "added_tokens": [{"id": len(tokens) - 1, "content": "<|endoftext|>", "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False,
                          "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+|\\s+"},
             "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "vocab": vocab, "merges": merges}}
    spm_tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    spm_tokens += ["\u2581", "a", "b", "\u2581a", "ab"]
    spm = {
        "version": "1.0",
        "added_tokens": [{"id": i, "content": t, "special": True, "normalized": False}
                         for i, t in enumerate(["<unk>", "<s>", "</s>"])],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1],
                                                      "tokens": ["<s>"]}}},
        "decoder": None,
        "model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": True, "fuse_unk": True,
                  "vocab": {t: i for i, t in enumerate(spm_tokens)},
                  "merges": [["\u2581", "a"], ["a", "b"]]}}
    config = {"add_bos_token": True, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
              "unk_token": None, "pad_token": {"content": "<|endoftext|>", "special": True}}
    spm_config = {"add_bos_token": False, "bos_token": "<s>", "eos_token": "</s>",
                  "unk_token": "<unk>"}
    return {"byte-level.json": json.dumps(byte_level).encode(),
            "sentencepiece.json": json.dumps(spm).encode(),
            # tokenizer.json, NUL, tokenizer_config.json
            "byte-level+config.json": (json.dumps(byte_level) + "\0" + json.dumps(config)).encode(),
            "sentencepiece+config.json": (json.dumps(spm) + "\0" + json.dumps(spm_config)).encode()}


def index_seeds():
    index = {"metadata": {"total_size": 1234},
             "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                            "lm_head.weight": "model-00002-of-00002.safetensors",
                            "model.norm.weight": "model-00002-of-00002.safetensors"}}
    return {"index.json": json.dumps(index, indent=2).encode()}


def scheme_seeds():
    w4 = {"name": "W4A8-KV8",
          "weight": {"bits": 4, "symmetric": False, "granularity": "per-channel", "group_size": 0,
                     "init": "minmax", "clip_steps": 100, "clip_norm": 2.4},
          "activation": {"mode": "per-token-dynamic", "bits": 8, "init": "minmax",
                         "clip_steps": 100, "clip_norm": 2.4},
          "kv8": True,
          "layers": {"blocks": "all", "linears": "all", "embeddings": False, "lm_head": False}}
    g128 = {"name": "W3A16-g128",
            "weight": {"bits": 3, "granularity": "per-group", "group_size": 128,
                       "init": "clip-search"},
            "activation": {"mode": "none"},
            "layers": {"blocks": [0, 1, 5], "linears": ["q_proj", "down_proj"], "lm_head": True}}
    static = {"weight": {"bits": 8, "symmetric": True, "granularity": "per-tensor"},
              "activation": {"mode": "per-tensor-static", "bits": 8, "init": "clip-search"}}
    return {"w4a8.json": json.dumps(w4).encode(), "g128.json": json.dumps(g128).encode(),
            "static.json": json.dumps(static).encode()}


def run_blob_seeds():
    curve = b"".join(struct.pack("<If", i, 1.0 / (i + 1)) for i in range(8))
    spectrum = b"".join(struct.pack("<d", 10.0 / (i + 1)) for i in range(6))
    hyper = json.dumps({"rank": 8, "lr": 1e-3, "iterations": 200, "nested": {"a": [1, 2]}})
    scheme = json.dumps({"name": "W4A16", "weight": {"bits": 4, "granularity": "per-channel"}})
    return {"curve.bin": curve, "spectrum.bin": spectrum,
            "json.txt": (hyper + "\0" + scheme).encode()}


def encode_seeds():
    texts = ["Hello world, it's the thing! 123 4567\n\n  tabs\tand  spaces",
             "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001F600 \u2581x",
             "<|endoftext|><|im_start|>user\nhi<|im_end|>", "   leading and trailing   "]
    seeds = {}
    for flags in range(8):
        for i, t in enumerate(texts):
            seeds["text-%d-%d" % (flags, i)] = bytes([flags]) + t.encode()
    seeds["invalid-utf8"] = bytes([0]) + b"\xff\xfe\xc0\x80 abc \xed\xa0\x80"
    return seeds


def main():
    out = sys.argv[1]
    targets = {
        "fuzz_gguf": gguf_seeds(), "fuzz_gguf_model": gguf_seeds(),
        "fuzz_safetensors": safetensors_seeds(), "fuzz_safetensors_index": index_seeds(),
        "fuzz_hf_config": config_seeds(), "fuzz_tokenizer_json": tokenizer_json_seeds(),
        "fuzz_tokenizer_encode": encode_seeds(), "fuzz_scheme": scheme_seeds(),
        "fuzz_run_blob": run_blob_seeds(), "fuzz_packed": packed_seeds(),
    }
    for target, seeds in targets.items():
        folder = os.path.join(out, target)
        os.makedirs(folder, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
