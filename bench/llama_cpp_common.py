"""Shared pieces of the benchmarks against llama.cpp's own tools
(bench/perplexity_vs_llama.py, bench/llama_cpp_compare.py). Python standard library only.

The llama.cpp tools come from bench/llama_cpp_tools.sh (built once, cached). The
full-precision reference that llama.cpp reads is an F32 GGUF written by llama-quantize
from the default model's Q4_1 GGUF (--allow-requantize to F32): the same dequantized
weights the workbench calls its reference, which `check_reference` verifies by
evaluating both files with `lrq eval`.
"""
import json
import os
import re
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = os.environ.get("LRQ_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lrq-workbench")
WORK = os.path.join(CACHE, "llama-bench")
TOOLS = ["llama-quantize", "llama-imatrix", "llama-perplexity", "llama-tokenize"]


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def quoted(cmd):
    return " ".join(shlex.quote(str(c)) for c in cmd)


def run(cmd, check=True, env=None):
    """Runs cmd; returns (stdout, stderr, seconds). Raises SystemExit with the tail of
    stderr when check and the command fails."""
    start = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env,
                          errors="replace")
    seconds = time.perf_counter() - start
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise SystemExit("failed (exit %d): %s\n%s" % (proc.returncode, quoted(cmd), tail))
    return proc.stdout, proc.stderr, seconds, proc.returncode


def llama_bin(given):
    """The directory holding the llama.cpp tools: given, or built/cached by the script."""
    if given:
        path = os.path.abspath(given)
    else:
        log("llama.cpp tools: bench/llama_cpp_tools.sh (builds them on first use)")
        out, _, _, _ = run([os.path.join(HERE, "llama_cpp_tools.sh")])
        path = out.strip().splitlines()[-1]
    for tool in TOOLS:
        if not os.access(os.path.join(path, tool), os.X_OK):
            raise SystemExit("no executable %s in %s" % (tool, path))
    return path


def llama_version(bin_dir):
    """What bench/llama_cpp_tools.sh recorded about the build (its BUILT file), if any."""
    stamp = os.path.join(os.path.dirname(bin_dir), "BUILT")
    if os.path.exists(stamp):
        with open(stamp) as f:
            return f.readline().strip()
    return "llama.cpp tools in " + bin_dir


def lrq_json(lrq, args):
    out, _, seconds, _ = run([lrq] + args + ["--json", "--quiet"])
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line), seconds
    raise SystemExit("no JSON from %s" % quoted([lrq] + args))


def default_model_path(lrq, model):
    info, _ = lrq_json(lrq, ["info", model])
    return info["path"]


def write_text(lrq, part, directory):
    """The project's text `part` (evaluation, calibration, out-of-domain) or a file path,
    as a file the llama.cpp tools can read; returns its path."""
    if os.path.isfile(part):
        return os.path.abspath(part)
    out, _, _, _ = run([lrq, "text", "--part", part])
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "%s.txt" % part)
    with open(path, "w", encoding="utf-8") as f:
        f.write(out)
    return path


def f32_reference(bin_dir, source_gguf, threads):
    """An F32 GGUF of source_gguf written by llama-quantize (dequantized weights, every
    tensor F32), cached beside the other benchmark files; returns its path."""
    os.makedirs(WORK, exist_ok=True)
    stem = os.path.splitext(os.path.basename(source_gguf))[0]
    out = os.path.join(WORK, stem + ".F32.gguf")
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(source_gguf):
        return out
    cmd = [os.path.join(bin_dir, "llama-quantize"), "--allow-requantize", source_gguf,
           out + ".part", "F32", str(threads)]
    log("writing the F32 reference:", quoted(cmd))
    run(cmd)
    os.replace(out + ".part", out)
    return out


def check_reference(lrq, model, f32_gguf, text, ctx, windows, threads):
    """`lrq eval` of the default model (our dequantization of its Q4_1) and of llama.cpp's
    F32 file on the same windows: equal perplexities mean equal weights."""
    args = ["--text", text, "--seq-len", str(ctx), "--max-windows", str(windows),
            "--threads", str(threads)]
    ours, _ = lrq_json(lrq, ["eval", model] + args)
    theirs, _ = lrq_json(lrq, ["eval", f32_gguf] + args)
    rel = abs(ours["perplexity"] - theirs["perplexity"]) / ours["perplexity"]
    return {"lrq_eval_default": ours["perplexity"], "lrq_eval_f32_gguf": theirs["perplexity"],
            "relative_difference": rel, "equal": rel < 1e-5}


def llama_token_ids(bin_dir, gguf, text):
    """The ids llama.cpp's tokenizer gives the text (BOS as the model asks, special-token
    text not parsed, as llama-perplexity tokenizes)."""
    out, _, _, _ = run([os.path.join(bin_dir, "llama-tokenize"), "-m", gguf, "-f", text,
                        "--ids", "--no-escape", "--no-parse-special", "--log-disable"])
    line = next((l for l in out.splitlines() if l.startswith("[")), None)
    if line is None:
        raise SystemExit("llama-tokenize printed no id list")
    return json.loads(line)


def lrq_token_ids(lrq, model, text):
    """Our ids for the text, as eval tokenizes it; None when this lrq has no `tokenize`."""
    proc = subprocess.run([lrq, "tokenize", model, "--text", text, "--ids", "--json", "--quiet"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        if "unknown command" in proc.stderr:
            return None
        raise SystemExit("lrq tokenize failed: " + proc.stderr.strip())
    return json.loads(proc.stdout.strip().splitlines()[-1])["ids"]


def compare_tokens(lrq, model, bin_dir, gguf, text):
    theirs = llama_token_ids(bin_dir, gguf, text)
    ours = lrq_token_ids(lrq, model, text)
    result = {"llama_tokenize": len(theirs), "lrq_tokenize": None, "same_ids": None,
              "first_difference": None}
    if ours is not None:
        result["lrq_tokenize"] = len(ours)
        result["same_ids"] = ours == theirs
        for i, (a, b) in enumerate(zip(ours, theirs)):
            if a != b:
                result["first_difference"] = i
                break
    return result


_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


# llama-perplexity's options for the log parse_perplexity_log reads: info level (the
# model loader's file size and the perf counters), time-stamped lines.
LOG_OPTIONS = ["-lv", "4", "--log-timestamps", "--log-prefix", "--log-colors", "off"]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STAMP = r"([0-9]+)\.([0-9]{2})\.([0-9]{3})\.([0-9]{3}) [A-Z] "


def _stamp_before(text, what):
    m = re.search(_STAMP + re.escape(what), text)
    if not m:
        return None
    minutes, seconds, ms, us = (int(g) for g in m.groups())
    return minutes * 60 + seconds + ms / 1e3 + us / 1e6


def parse_perplexity_log(text):
    """The figures llama-perplexity prints (plain run or --kl-divergence, with
    LOG_OPTIONS). loop_s: from the line announcing the chunks to the final estimate, the
    time of its evaluation loop (decode, log-softmax and scoring), as `lrq eval` reports
    its own; decode_ms: libllama's prompt-eval counter (the forward passes alone)."""
    text = _ANSI.sub("", text)
    found = {}
    start = _stamp_before(text, "perplexity: calculating perplexity over")
    end = _stamp_before(text, "Final estimate")
    if start is not None and end is not None:
        found["loop_s"] = end - start
    m = re.search(r"add_bos_token\s+bool\s+=\s+(true|false)", text)
    if m:
        found["add_bos"] = m.group(1) == "true"
    m = re.search(r"flash_attn\s+=\s+(\S+)", text)
    if m:
        found["flash_attn"] = m.group(1)
    patterns = {
        "ppl": r"Final estimate: PPL = " + _NUMBER,
        "ppl_q": r"Mean PPL\(Q\)\s*:\s*" + _NUMBER,
        "ppl_base": r"Mean PPL\(base\)\s*:\s*" + _NUMBER,
        "kld": r"Mean\s+KLD:\s*" + _NUMBER,
        "kld_max": r"Maximum KLD:\s*" + _NUMBER,
        "same_top_p": r"Same top p:\s*" + _NUMBER,
        "bpw": r"file size\s*=\s*[0-9.]+ [MG]iB \(" + _NUMBER + r" BPW\)",
        "chunks": r"(?:computing|calculating perplexity) over ([0-9]+) chunks",
        "n_ctx": r"over [0-9]+ chunks, n_ctx=([0-9]+)",
        "decode_ms": r"prompt eval time =\s*" + _NUMBER + r" ms",
        "decode_tokens": r"prompt eval time =\s*[0-9.]+ ms /\s*([0-9]+) tokens",
    }
    for key, pattern in patterns.items():
        m = re.search(pattern, text)
        if m:
            value = float(m.group(1))
            found[key] = int(value) if key in ("chunks", "n_ctx", "decode_tokens") else value
    if "same_top_p" in found:
        found["same_top_p"] /= 100.0  # printed in percent
    return found


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def fmt(value, digits=4):
    if value is None:
        return "–"
    if isinstance(value, float):
        return "%.*f" % (digits, value)
    return str(value)
