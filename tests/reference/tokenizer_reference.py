#!/usr/bin/env python3
"""Independent reference for test_tokenizer: Hugging Face `tokenizers`.

Usage: tokenizer_reference.py GGUF OUT_DIR [PROSE_FILE]

Writes into OUT_DIR:
  gguf_vocab.json          tokens / token types / merges / special ids read from the
                           GGUF with the `gguf` package (what a GGUF loader hands over)
  smollm/tokenizer.json    HF tokenizer built from that vocabulary with SmolLM2's own
  smollm/tokenizer_config.json   pipeline: Sequence[Digits(individual_digits=True),
                           ByteLevel(add_prefix_space=False, use_regex=True)], ByteLevel
                           decoder, the control tokens as special added tokens
  smollm_cases.json        corpus strings with HF ids, plain (special-token text encoded
                           as text) and with special tokens parsed; the prose file's ids
  spm/tokenizer.json       a small synthetic LLaMA-2-style tokenizer (BPE with
  spm/tokenizer_config.json  byte_fallback, Prepend+Replace normalizer, merges as "a b")
  spm_cases.json           corpus strings with HF ids (without and with BOS)
  variant_{gpt2,llama3,qwen2}.json  the SmolLM2 vocabulary behind those families'
                           pre-tokenizers (ids in smollm_cases.json "variants")
Prints a one-line JSON summary on stdout.
"""
import json
import os
import random
import sys

try:
    import tokenizers
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                            pre_tokenizers)
    from tokenizers.processors import TemplateProcessing
except ImportError as e:  # the test must fail, not skip
    sys.stderr.write("the HF `tokenizers` package is not importable: %s\n" % e)
    sys.exit(2)

try:
    import gguf
except ImportError as e:
    sys.stderr.write("the `gguf` package is not importable: %s\n" % e)
    sys.exit(2)

SPACE_MARK = "\u2581"

FIXED_CORPUS = [
    "",
    " ",
    "Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, "
    "it was the age of foolishness.",
    "I'm sure you're right, but they've said we'll go and I'd rather not. "
    "DON'T SHOUT! It'S fine, isn'T it? O'Neil's rock'n'roll",
    "12345", "3.14", "3.14159265358979", "1,000,000", "2024-06-01", "v1.2.3", "0x1F", "1e-5",
    "A price of $19.99 (or 20%) for 3 items.",
    "   leading spaces", "trailing spaces   ", "a  b   c    d", "tab\tseparated\tvalues",
    "line one\nline two\n\nline four\r\nwindows line\n", "\n\n\n", "\t \t  \n \n",
    " \u00a0nbsp\u00a0 \u3000ideographic space", "a\u2028b\u2029c\u0085d\x0be\x0cf",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "#include <vector>\nint main() {\n  std::vector<int> v{1, 2, 3};\n  return v.size() > 2 ? 0 : 1;\n}\n",
    "for (int i = 0; i < 10; ++i) { sum += a[i] * b[i]; }",
    "SELECT id, name FROM users WHERE age >= 21 ORDER BY name;",
    "{\"key\": [1, 2.5, null, true], \"nested\": {\"x\": \"y\"}}",
    "https://example.com/path?query=1&other=two#frag",
    "Punctuation!!! ??? ... --- *** ((( ))) [[[ ]]] {{{ }}} <<< >>> @@@ ### $$$",
    "Emoji: \U0001F600\U0001F602 \U0001F44D\U0001F3FD \U0001F468\u200D\U0001F469\u200D\U0001F467 \u2764\uFE0F \U0001F1EB\U0001F1F7",
    "\u4e2d\u6587\u5b57\u7b26\u6d4b\u8bd5\uff0c\u8fd9\u662f\u4e00\u4e2a\u53e5\u5b50\u3002",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002\u30ab\u30bf\u30ab\u30ca",
    "\ud55c\uad6d\uc5b4 \ubb38\uc7a5\uc785\ub2c8\ub2e4.",
    "\u0627\u0644\u0633\u0644\u0627\u0645 \u0639\u0644\u064a\u0643\u0645 \u0661\u0662\u0663\u0664",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e \u0967\u0968\u0969",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0394\u03b5\u03b9\u03b3\u03bc\u03b1.",
    "Combining: e\u0301 a\u0308 n\u0303 o\u0302\u0323 Z\u0335\u0321\u0322alg\u0337o\u0338",
    "Superscripts x\u00b2 + y\u00b3 = \u00bd and \u2167 roman, \u2460 circled",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00dcber stra\u00dfe",
    "<|im_start|>user\nHi<|im_end|>",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text", "<|im_start|><|im_end|><|im_start|>", "<|im_start", "im_end|>",
    "<|im_start|>user\n12345 is 3.14?<|im_end|>\n<repo_name>x<file_sep>",
    "\x00\x01\x02 control \x1b[0m \x7f",
    "\u2581already\u2581marked\u2581text",
    "a" * 300,
    " " * 100 + "x",
    "-" * 257,
    "word " * 60,
]

LETTERS_EXTRA = "\u00e9\u00e8\u00fc\u00f1\u00df\u0142\u0153\u00e6\u0107\u0161\u017e\u0105"
WHITESPACE = [" ", "  ", "\n", "\t", "\r\n", "\u00a0", "\u3000", "\u2028", "\x0b", "\x0c",
              "\x85", "\u2009", "\u200b", "\ufeff", "\u180e", "\x1c"]
DIGITS = "0123456789\u0660\u0661\u0967\u00b2\u00bd\u2167\u2460\uff11"


def random_char(rng):
    r = rng.random()
    if r < 0.30:
        return chr(rng.randint(0x20, 0x7E))
    if r < 0.40:
        return rng.choice(WHITESPACE)
    if r < 0.48:
        return rng.choice(DIGITS)
    if r < 0.55:
        return rng.choice(LETTERS_EXTRA + "'.,;:!?-_")
    if r < 0.62:
        return chr(rng.randint(0x4E00, 0x9FFF))
    if r < 0.67:
        return chr(rng.choice([rng.randint(0x1F300, 0x1FAFF), 0x200D, 0xFE0F, 0x1F3FB]))
    if r < 0.72:
        return chr(rng.randint(0x0300, 0x036F))
    if r < 0.80:
        return chr(rng.choice([rng.randint(0x0600, 0x06FF), rng.randint(0x0590, 0x05FF),
                               rng.randint(0x0900, 0x097F), rng.randint(0x0400, 0x04FF)]))
    while True:  # any scalar value, assigned or not
        cp = rng.randint(0, 0x10FFFF)
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def random_strings(seed, count):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randint(1, 48)
        out.append("".join(random_char(rng) for _ in range(n)))
    return out


def read_gguf_vocab(path):
    reader = gguf.GGUFReader(path)

    def value(key, default=None):
        field = reader.fields.get(key)
        return default if field is None else field.contents()

    return {
        "model": value("tokenizer.ggml.model"),
        "pre": value("tokenizer.ggml.pre", "default"),
        "tokens": value("tokenizer.ggml.tokens"),
        "types": value("tokenizer.ggml.token_type", []),
        "merges": value("tokenizer.ggml.merges", []),
        "bos": value("tokenizer.ggml.bos_token_id", -1),
        "eos": value("tokenizer.ggml.eos_token_id", -1),
        "unk": value("tokenizer.ggml.unknown_token_id", -1),
        "pad": value("tokenizer.ggml.padding_token_id", -1),
        "add_bos": bool(value("tokenizer.ggml.add_bos_token", False)),
    }


def build_smollm(vocab):
    tokens = vocab["tokens"]
    merges = [tuple(m.split(" ", 1)) for m in vocab["merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    control = [tokens[i] for i, t in enumerate(vocab["types"]) if t == 3]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tok


# Other llama.cpp pre-tokenizer types, as their models' tokenizer.json files write them.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def build_variant(vocab, pre):
    """The SmolLM2 vocabulary behind another model family's pre-tokenizer."""
    tokens = vocab["tokens"]
    merges = [tuple(m.split(" ", 1)) for m in vocab["merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               ignore_merges=(pre == "llama3")))
    if pre == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        pattern = LLAMA3_PATTERN if pre == "llama3" else QWEN2_PATTERN
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    return tok


def encode_both(tok, text, add_special=False):
    """HF ids with special-token text encoded as plain text, and with it parsed."""
    tok.encode_special_tokens = True
    plain = tok.encode(text, add_special_tokens=add_special).ids
    tok.encode_special_tokens = False
    parsed = tok.encode(text, add_special_tokens=add_special).ids
    return plain, parsed


def train_spm_merges(sentences, n_merges):
    """Plain BPE training over '▁'-normalised sentences (ties: smallest pair)."""
    seqs = [list(SPACE_MARK + s.replace(" ", SPACE_MARK)) for s in sentences]
    alphabet = sorted({c for s in seqs for c in s})
    merges = []
    for _ in range(n_merges):
        counts = {}
        for s in seqs:
            for a, b in zip(s, s[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        best = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        for k, s in enumerate(seqs):
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[k] = out
    return alphabet, merges


SPM_TRAINING = [
    "the cat sat on the mat and the dog sat on the log",
    "there is nothing either good or bad but thinking makes it so",
    "to be or not to be that is the question",
    "all the world is a stage and all the men and women merely players",
    "the rain in spain stays mainly in the plain",
    "Hello, world. Hello, there! This is a test; this is only a test.",
    "she sells sea shells by the sea shore",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
]


def build_spm(out_dir):
    alphabet, merges = train_spm_merges(SPM_TRAINING, 220)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for c in alphabet:
        vocab.setdefault(c, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE_MARK),
                                           normalizers.Replace(" ", SPACE_MARK)])
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE_MARK, " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path)
    # Older tokenizer.json files write merges as "a b" strings: exercise that form.
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    doc["model"]["merges"] = [m if isinstance(m, str) else " ".join(m)
                              for m in doc["model"]["merges"]]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"add_bos_token": True,
                   "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False,
                                 "normalized": False, "rstrip": False, "single_word": False},
                   "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None}, f)
    return Tokenizer.from_file(path), len(merges), len(vocab)


def main():
    if len(sys.argv) < 3:
        sys.stderr.write(__doc__)
        sys.exit(1)
    gguf_path, out_dir = sys.argv[1], sys.argv[2]
    prose_path = sys.argv[3] if len(sys.argv) > 3 else None
    os.makedirs(out_dir, exist_ok=True)

    vocab = read_gguf_vocab(gguf_path)
    with open(os.path.join(out_dir, "gguf_vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)

    corpus = FIXED_CORPUS + random_strings(20240601, 400)

    tok = build_smollm(vocab)
    smollm_dir = os.path.join(out_dir, "smollm")
    os.makedirs(smollm_dir, exist_ok=True)
    tok.save(os.path.join(smollm_dir, "tokenizer.json"))
    with open(os.path.join(smollm_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"add_bos_token": False,
                   "bos_token": vocab["tokens"][vocab["bos"]],
                   "eos_token": {"content": vocab["tokens"][vocab["eos"]], "special": True},
                   "unk_token": vocab["tokens"][vocab["unk"]],
                   "pad_token": vocab["tokens"][vocab["pad"]]}, f)
    cases = []
    for text in corpus:
        plain, parsed = encode_both(tok, text)
        # Whether HF gets the text back: not when it holds bytes whose characters the
        # vocabulary lacks (SmolLM2 lacks e.g. 0x04 and the lead bytes 0xF1/0xF2).
        cases.append({"text": text, "ids": plain, "ids_special": parsed,
                      "round_trips": tok.decode(plain, skip_special_tokens=False) == text})
    prose = None
    if prose_path:
        with open(prose_path, encoding="utf-8") as f:
            text = f.read()
        tok.encode_special_tokens = True
        prose = tok.encode(text, add_special_tokens=False).ids
    variants = {}
    for pre in ("gpt2", "llama3", "qwen2"):
        variant = build_variant(vocab, pre)
        variant.save(os.path.join(out_dir, "variant_%s.json" % pre))
        variants[pre] = [variant.encode(text, add_special_tokens=False).ids for text in corpus]
    with open(os.path.join(out_dir, "smollm_cases.json"), "w", encoding="utf-8") as f:
        json.dump({"cases": cases, "prose_ids": prose, "variants": variants}, f)

    spm, n_merges, n_vocab = build_spm(os.path.join(out_dir, "spm"))
    spm_cases = []
    for text in corpus:
        plain, parsed = encode_both(spm, text)
        spm.encode_special_tokens = True
        with_bos = spm.encode(text, add_special_tokens=True).ids
        spm_cases.append({"text": text, "ids": plain, "ids_special": parsed,
                          "ids_bos": with_bos})
    for text in ("<s>hello</s> world", "x</s><s> the cat", "<unk>"):
        plain, parsed = encode_both(spm, text)
        spm.encode_special_tokens = True
        with_bos = spm.encode(text, add_special_tokens=True).ids
        spm_cases.append({"text": text, "ids": plain, "ids_special": parsed,
                          "ids_bos": with_bos})
    with open(os.path.join(out_dir, "spm_cases.json"), "w", encoding="utf-8") as f:
        json.dump({"cases": spm_cases}, f)

    print(json.dumps({"tokenizers_version": tokenizers.__version__,
                      "smollm_cases": len(cases), "spm_cases": len(spm_cases),
                      "spm_merges": n_merges, "spm_vocab": n_vocab,
                      "prose_tokens": len(prose) if prose is not None else 0}))


if __name__ == "__main__":
    main()
