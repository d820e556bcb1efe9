#!/usr/bin/env python3
"""Independent numpy forward passes for the decoder, perplexity and analysis tests.

Written from the HF modelling conventions (LLaMA: RMSNorm, rotate_half rotary
embeddings, grouped-query attention by repeating K/V, SwiGLU; OPT: learned
positions with offset 2, pre/post LayerNorm, ReLU) without reference to the C++
code. Everything is computed in float64.

Commands (all print one JSON object on stdout):
  tiny OUTDIR
      Writes seeded random tiny models OUTDIR/<name>.bin (raw little-endian
      float32) + OUTDIR/<name>.json (config, tensor index, tokens, and the
      reference logits stored in the same .bin).
  gguf-logits GGUF OUT.bin COUNT
      Tokenizes the built-in text, runs the first COUNT tokens through the
      GGUF model and writes logits [COUNT, vocab] float32 to OUT.bin.
  gguf-ppl GGUF SEQLEN WINDOWS
      Mean next-token NLL over WINDOWS non-overlapping windows of SEQLEN
      tokens of the built-in text.
  svd OUT.bin ROWS COLS
      A seeded random matrix (float32, written to OUT.bin) and its singular
      values from numpy.linalg.svd.
"""
import json
import os
import sys

import numpy as np

# ----------------------------------------------------------------------------
# Shared pieces


def rms_norm(x, w, eps):
    var = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(var + eps) * w


def layer_norm(x, w, b, eps):
    mu = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def softmax(x):
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=-1, keepdims=True)


def causal_attention(q, k, v):
    """q [B,H,T,d], k/v [B,H,T,d] (already repeated per head)."""
    d = q.shape[-1]
    t = q.shape[2]
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(d)
    future = np.triu(np.ones((t, t), dtype=bool), 1)
    scores = np.where(future, -np.inf, scores)
    return softmax(scores) @ v


def lin(x, w, b=None):
    y = x @ np.asarray(w, dtype=np.float64).T
    if b is not None:
        y = y + b
    return y


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rope_cos_sin(positions, head_dim, theta):
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    freqs = np.outer(positions.astype(np.float64), inv)
    emb = np.concatenate([freqs, freqs], axis=-1)  # [T, d]
    return np.cos(emb), np.sin(emb)


def llama_forward(cfg, get, tokens):
    """tokens [B,T] -> logits [B,T,V]. get(name) returns a float array or None."""
    B, T = tokens.shape
    H, KV = cfg["num_heads"], cfg["num_kv_heads"]
    d = cfg["head_dim"]
    eps = cfg["norm_eps"]
    x = np.asarray(get("model.embed_tokens.weight"), dtype=np.float64)[tokens]
    cos, sin = rope_cos_sin(np.arange(T), d, cfg["rope_theta"])
    for i in range(cfg["num_layers"]):
        p = f"model.layers.{i}."
        n = rms_norm(x, get(p + "input_layernorm.weight"), eps)

        def proj(name, heads):
            y = lin(n, get(p + f"self_attn.{name}.weight"), get(p + f"self_attn.{name}.bias"))
            return y.reshape(B, T, heads, d).transpose(0, 2, 1, 3)

        q, k, v = proj("q_proj", H), proj("k_proj", KV), proj("v_proj", KV)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = np.repeat(k, H // KV, axis=1)
        v = np.repeat(v, H // KV, axis=1)
        ctx = causal_attention(q, k, v).transpose(0, 2, 1, 3).reshape(B, T, H * d)
        x = x + lin(ctx, get(p + "self_attn.o_proj.weight"), get(p + "self_attn.o_proj.bias"))
        n = rms_norm(x, get(p + "post_attention_layernorm.weight"), eps)
        g = lin(n, get(p + "mlp.gate_proj.weight"))
        u = lin(n, get(p + "mlp.up_proj.weight"))
        x = x + lin(g / (1.0 + np.exp(-g)) * u, get(p + "mlp.down_proj.weight"))
    x = rms_norm(x, get("model.norm.weight"), eps)
    head = get("lm_head.weight")
    if head is None:
        head = get("model.embed_tokens.weight")
    return lin(x, head)


def opt_forward(cfg, get, tokens):
    B, T = tokens.shape
    H = cfg["num_heads"]
    hidden = cfg["hidden"]
    d = hidden // H
    eps = cfg["norm_eps"]
    pre = cfg["do_layer_norm_before"]
    dec = "model.decoder."
    x = np.asarray(get(dec + "embed_tokens.weight"), dtype=np.float64)[tokens]
    if get(dec + "project_in.weight") is not None:
        x = lin(x, get(dec + "project_in.weight"))
    x = x + np.asarray(get(dec + "embed_positions.weight"), dtype=np.float64)[np.arange(T) + 2]
    for i in range(cfg["num_layers"]):
        p = f"{dec}layers.{i}."

        def ln(name, y):
            return layer_norm(y, get(p + name + ".weight"), get(p + name + ".bias"), eps)

        res = x
        n = ln("self_attn_layer_norm", x) if pre else x

        def proj(name):
            y = lin(n, get(p + f"self_attn.{name}.weight"), get(p + f"self_attn.{name}.bias"))
            return y.reshape(B, T, H, d).transpose(0, 2, 1, 3)

        ctx = causal_attention(proj("q_proj"), proj("k_proj"), proj("v_proj"))
        ctx = ctx.transpose(0, 2, 1, 3).reshape(B, T, hidden)
        x = res + lin(ctx, get(p + "self_attn.out_proj.weight"), get(p + "self_attn.out_proj.bias"))
        if not pre:
            x = ln("self_attn_layer_norm", x)
        res = x
        n = ln("final_layer_norm", x) if pre else x
        f = np.maximum(lin(n, get(p + "fc1.weight"), get(p + "fc1.bias")), 0.0)
        x = res + lin(f, get(p + "fc2.weight"), get(p + "fc2.bias"))
        if not pre:
            x = ln("final_layer_norm", x)
    if get(dec + "final_layer_norm.weight") is not None:
        x = layer_norm(x, get(dec + "final_layer_norm.weight"), get(dec + "final_layer_norm.bias"), eps)
    if get(dec + "project_out.weight") is not None:
        x = lin(x, get(dec + "project_out.weight"))
    head = get("lm_head.weight")
    if head is None:
        head = get(dec + "embed_tokens.weight")
    return lin(x, head)


# ----------------------------------------------------------------------------
# Tiny random models


def tiny_llama(rng, name, *, bias, tied, head_dim, theta):
    cfg = dict(arch="llama", vocab=97, hidden=64, intermediate=96, num_layers=2, num_heads=4,
               num_kv_heads=2, head_dim=head_dim, norm_eps=1e-5, rope_theta=theta,
               max_positions=64, attention_bias=bias, tie_embeddings=tied)
    h, qd, kvd, f = 64, 4 * head_dim, 2 * head_dim, 96
    t = {"model.embed_tokens.weight": rng.standard_normal((97, h))}
    for i in range(2):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1.0 + 0.2 * rng.standard_normal(h)
        t[p + "post_attention_layernorm.weight"] = 1.0 + 0.2 * rng.standard_normal(h)
        for nm, (o, n) in {"q_proj": (qd, h), "k_proj": (kvd, h), "v_proj": (kvd, h),
                           "o_proj": (h, qd)}.items():
            t[p + f"self_attn.{nm}.weight"] = rng.standard_normal((o, n)) / np.sqrt(n)
            if bias and nm != "o_proj":
                t[p + f"self_attn.{nm}.bias"] = 0.3 * rng.standard_normal(o)
        for nm, (o, n) in {"gate_proj": (f, h), "up_proj": (f, h), "down_proj": (h, f)}.items():
            t[p + f"mlp.{nm}.weight"] = rng.standard_normal((o, n)) / np.sqrt(n)
    t["model.norm.weight"] = 1.0 + 0.2 * rng.standard_normal(h)
    if not tied:
        t["lm_head.weight"] = rng.standard_normal((97, h)) / np.sqrt(h)
    return name, cfg, t


def tiny_opt(rng, name, *, pre, proj_dim):
    h, f, vocab, maxpos = 48, 80, 89, 32
    e = proj_dim or h
    cfg = dict(arch="opt", vocab=vocab, hidden=h, intermediate=f, num_layers=2, num_heads=4,
               num_kv_heads=4, head_dim=h // 4, norm_eps=1e-5, max_positions=maxpos,
               do_layer_norm_before=pre, word_embed_proj_dim=proj_dim, tie_embeddings=True)
    dec = "model.decoder."
    t = {dec + "embed_tokens.weight": rng.standard_normal((vocab, e)),
         dec + "embed_positions.weight": 0.5 * rng.standard_normal((maxpos + 2, h))}
    if proj_dim:
        t[dec + "project_in.weight"] = rng.standard_normal((h, e)) / np.sqrt(e)
        t[dec + "project_out.weight"] = rng.standard_normal((e, h)) / np.sqrt(h)
    for i in range(2):
        p = f"{dec}layers.{i}."
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            t[p + ln + ".weight"] = 1.0 + 0.2 * rng.standard_normal(h)
            t[p + ln + ".bias"] = 0.1 * rng.standard_normal(h)
        for nm in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[p + f"self_attn.{nm}.weight"] = rng.standard_normal((h, h)) / np.sqrt(h)
            t[p + f"self_attn.{nm}.bias"] = 0.2 * rng.standard_normal(h)
        t[p + "fc1.weight"] = rng.standard_normal((f, h)) / np.sqrt(h)
        t[p + "fc1.bias"] = 0.2 * rng.standard_normal(f)
        t[p + "fc2.weight"] = rng.standard_normal((h, f)) / np.sqrt(f)
        t[p + "fc2.bias"] = 0.2 * rng.standard_normal(h)
    if pre:
        t[dec + "final_layer_norm.weight"] = 1.0 + 0.2 * rng.standard_normal(h)
        t[dec + "final_layer_norm.bias"] = 0.1 * rng.standard_normal(h)
    return name, cfg, t


def cmd_tiny(outdir):
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(20240711)
    models = [
        tiny_llama(rng, "llama_gqa", bias=False, tied=False, head_dim=16, theta=10000.0),
        tiny_llama(rng, "llama_bias", bias=True, tied=True, head_dim=24, theta=500000.0),
        tiny_opt(rng, "opt_pre", pre=True, proj_dim=0),
        tiny_opt(rng, "opt_post_proj", pre=False, proj_dim=32),
    ]
    names = []
    for name, cfg, tensors in models:
        # Store float32 and compute the reference from exactly those values.
        tensors = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
        tokens = rng.integers(0, cfg["vocab"], size=(2, 13))
        fwd = llama_forward if cfg["arch"] == "llama" else opt_forward
        logits = fwd(cfg, lambda n: tensors.get(n), tokens)
        index, blobs, offset = [], [], 0
        for k in sorted(tensors):
            a = tensors[k]
            index.append(dict(name=k, shape=list(a.shape), offset=offset))
            blobs.append(a.ravel())
            offset += a.size
        blobs.append(logits.astype(np.float32).ravel())
        meta = dict(config=cfg, tensors=index, tokens=tokens.tolist(),
                    logits=dict(offset=offset, shape=list(logits.shape)))
        offset += logits.size
        if cfg["arch"] == "llama":
            # A sequence longer than the positions the C++ side tabulates and
            # than its attention's query chunk.
            long_tokens = rng.integers(0, cfg["vocab"], size=(1, 300))
            long_logits = fwd(cfg, lambda n: tensors.get(n), long_tokens)
            blobs.append(long_logits.astype(np.float32).ravel())
            meta["long_tokens"] = long_tokens.tolist()
            meta["long_logits"] = dict(offset=offset, shape=list(long_logits.shape))
        np.concatenate(blobs).astype("<f4").tofile(os.path.join(outdir, name + ".bin"))
        with open(os.path.join(outdir, name + ".json"), "w") as fh:
            json.dump(meta, fh)
        names.append(name)
    print(json.dumps(dict(models=names)))


# ----------------------------------------------------------------------------
# The real GGUF model

# Original prose for the perplexity/logit checks (about 4,000 characters).
TEXT = """The old lighthouse keeper kept a notebook for every season. In spring he wrote about the \
birds that returned to the cliffs, the first fishing boats that left the harbour before dawn, and \
the smell of wet grass after the rain. In summer the notebook filled with visitors: families who \
climbed the narrow stairs to look at the sea, students who asked how the lamp worked, and painters \
who sat on the rocks for hours trying to catch the colour of the water at noon.

Autumn was his favourite time of the year. The storms came in from the west, and the waves broke \
against the rocks with a sound like distant thunder. He would sit by the window with a cup of tea \
and watch the light sweep across the dark water, counting the seconds between each flash. Ships \
passed far away, their lights small and steady, and he wondered where they were going and what \
they carried. Sometimes a small boat would appear close to the shore, and he would stand ready \
with the radio in case it needed help.

Winter brought long nights and short days. The village below grew quiet, and the only visitors \
were the postman and a neighbour who brought bread on Fridays. The keeper spent the evenings \
repairing old clocks, a hobby he had learned from his father. Each clock had its own story. One \
had belonged to a sea captain, another had been found in an attic full of letters, and a third \
had stopped on the day a great storm flooded the harbour many years ago.

When the government decided to automate the lighthouse, people from the city came to install new \
equipment. They were polite and efficient, and they explained that the light would now be \
controlled by a computer. The keeper listened carefully and asked many questions about the \
batteries, the sensors and the backup systems. He was not angry, but he felt that something \
important was ending. For more than forty years the light had depended on his attention.

On his last evening he climbed the stairs one more time. The sun was setting behind the islands, \
and the sky turned orange, then purple, then a deep blue. He cleaned the glass, checked the lamp \
and wrote a final entry in his notebook. He described the weather, the direction of the wind and \
the number of ships he had seen that day, just as he had done every evening since he was a young \
man. Then he closed the notebook and placed it on the shelf with the others.

The next morning he moved into a small house in the village. From his kitchen he could still see \
the lighthouse, and every night he watched the light turn on exactly at sunset. Children from the \
school came to visit him and asked for stories about shipwrecks and storms. He told them about \
the winter when the sea froze near the harbour, about the whale that swam into the bay, and about \
the night a lost sailor followed the light home through the fog.

Years later the village opened a small museum next to the harbour. The notebooks were placed in a \
glass case, and visitors could read the careful handwriting that recorded the life of the coast. \
Scientists studied the pages to learn how the climate had changed, because the keeper had noted \
the temperature, the wind and the arrival of the birds with great precision. Historians used them \
to understand the lives of the fishing families, and writers found in them the beginning of many \
stories.

People often asked the keeper whether he missed his old life. He always smiled and said that the \
light had never really left him. It was part of the way he looked at the world: with patience, \
with attention to small changes, and with the belief that someone out there in the dark might \
need a sign to find their way. Every evening, when the beam crossed the water, he raised his cup \
of tea towards the window, as if greeting an old friend.
"""


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def greedy_tokenize(text, vocab):
    """Longest-match tokenization in the byte-level alphabet: not BPE, but
    every piece is a real vocabulary entry, so the tokens look like text."""
    table = bytes_to_unicode()
    s = "".join(table[b] for b in text.encode("utf-8"))
    ids = {tok: i for i, tok in enumerate(vocab)}
    longest = max(len(t) for t in vocab)
    out, i = [], 0
    while i < len(s):
        for n in range(min(longest, len(s) - i), 0, -1):
            piece = s[i:i + n]
            if piece in ids:
                out.append(ids[piece])
                i += n
                break
        else:
            raise SystemExit(f"cannot tokenize at {i}")
    return out


def unpermute_qk(w, heads):
    """llama.cpp's converter reorders q/k rows so each head's halves are
    interleaved (pairs); undo it: rows (head, i, pair) -> (head, pair, i)."""
    rows, cols = w.shape
    half = rows // heads // 2
    return w.reshape(heads, half, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


class GgufModel:
    def __init__(self, path):
        import gguf
        self.reader = gguf.GGUFReader(path)
        f = self.reader.fields

        def scalar(key):
            field = f[key]
            return field.parts[field.data[0]][0].item()

        arch = "llama"
        self.cfg = dict(
            num_layers=int(scalar(f"{arch}.block_count")),
            hidden=int(scalar(f"{arch}.embedding_length")),
            num_heads=int(scalar(f"{arch}.attention.head_count")),
            num_kv_heads=int(scalar(f"{arch}.attention.head_count_kv")),
            rope_theta=float(scalar(f"{arch}.rope.freq_base")),
            norm_eps=float(scalar(f"{arch}.attention.layer_norm_rms_epsilon")))
        self.cfg["head_dim"] = self.cfg["hidden"] // self.cfg["num_heads"]
        tok = f["tokenizer.ggml.tokens"]
        self.vocab = [bytes(tok.parts[i]).decode("utf-8") for i in tok.data]
        self.raw = {t.name: t for t in self.reader.tensors}
        self.cache = {}

    def hf_name_to_gguf(self, name):
        fixed = {"model.embed_tokens.weight": "token_embd.weight",
                 "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
        if name in fixed:
            return fixed[name]
        parts = name.split(".")  # model.layers.N.<group>.<what>.<weight|bias>
        i = parts[2]
        rest = ".".join(parts[3:])
        table = {"input_layernorm.weight": "attn_norm.weight",
                 "post_attention_layernorm.weight": "ffn_norm.weight",
                 "self_attn.q_proj.weight": "attn_q.weight",
                 "self_attn.k_proj.weight": "attn_k.weight",
                 "self_attn.v_proj.weight": "attn_v.weight",
                 "self_attn.o_proj.weight": "attn_output.weight",
                 "self_attn.q_proj.bias": "attn_q.bias",
                 "self_attn.k_proj.bias": "attn_k.bias",
                 "self_attn.v_proj.bias": "attn_v.bias",
                 "self_attn.o_proj.bias": "attn_output.bias",
                 "mlp.gate_proj.weight": "ffn_gate.weight",
                 "mlp.up_proj.weight": "ffn_up.weight",
                 "mlp.down_proj.weight": "ffn_down.weight"}
        return f"blk.{i}.{table[rest]}" if rest in table else None

    def get(self, name):
        if name in self.cache:
            return self.cache[name]
        import gguf
        g = self.hf_name_to_gguf(name)
        if g is None or g not in self.raw:
            self.cache[name] = None
            return None
        t = self.raw[g]
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        # GGUF lists dims fastest-first; numpy gives rows = output features.
        a = a.reshape([int(x) for x in reversed(t.shape)]) if a.ndim != len(t.shape) else a
        if name.endswith("q_proj.weight"):
            a = unpermute_qk(a, self.cfg["num_heads"])
        elif name.endswith("k_proj.weight"):
            a = unpermute_qk(a, self.cfg["num_kv_heads"])
        self.cache[name] = a
        return a

    def tokens(self):
        return greedy_tokenize(TEXT, self.vocab)

    def logits(self, tokens):
        return llama_forward(self.cfg, self.get, np.asarray(tokens)[None, :])[0]


def cmd_gguf_logits(path, out, count):
    m = GgufModel(path)
    toks = m.tokens()[:count]
    logits = m.logits(toks)
    logits.astype("<f4").tofile(out)
    print(json.dumps(dict(tokens=toks, shape=list(logits.shape))))


def cmd_gguf_ppl(path, seq_len, windows):
    m = GgufModel(path)
    toks = m.tokens()
    if len(toks) < seq_len * windows:
        raise SystemExit(f"text has {len(toks)} tokens, need {seq_len * windows}")
    total, count, per_window = 0.0, 0, []
    for w in range(windows):
        ids = toks[w * seq_len:(w + 1) * seq_len]
        logits = m.logits(ids)[:-1]
        m_ = logits.max(axis=-1, keepdims=True)
        lse = (m_[:, 0] + np.log(np.exp(logits - m_).sum(axis=-1)))
        nll = lse - logits[np.arange(seq_len - 1), ids[1:]]
        per_window.append(float(nll.mean()))
        total += float(nll.sum())
        count += seq_len - 1
    print(json.dumps(dict(tokens=toks[:seq_len * windows], mean_nll=total / count,
                          perplexity=float(np.exp(total / count)), per_window=per_window)))


def cmd_svd(out, rows, cols):
    rng = np.random.default_rng(7)
    # Columns with very different scales make a spread-out spectrum.
    a = (rng.standard_normal((rows, cols)) * np.geomspace(1.0, 1e-3, cols)).astype(np.float32)
    a.astype("<f4").tofile(out)
    s = np.linalg.svd(a.astype(np.float64), compute_uv=False)
    print(json.dumps(dict(singular_values=s.tolist())))


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cmd = argv[1]
    if cmd == "tiny":
        cmd_tiny(argv[2])
    elif cmd == "gguf-logits":
        cmd_gguf_logits(argv[2], argv[3], int(argv[4]))
    elif cmd == "gguf-ppl":
        cmd_gguf_ppl(argv[2], int(argv[3]), int(argv[4]))
    elif cmd == "svd":
        cmd_svd(argv[2], int(argv[3]), int(argv[4]))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
