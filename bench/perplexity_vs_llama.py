#!/usr/bin/env python3
"""Perplexity-evaluation speed of `lrq eval` against llama.cpp's llama-perplexity, on the
same model weights, text, windows and thread count.

usage: bench/perplexity_vs_llama.py [--lrq build/app/lrq] [--llama-bin DIR]
                                    [--model default] [--text evaluation|FILE]
                                    [--threads 2] [--ctx 512] [--windows 10]
                                    [--rounds 3] [--json FILE]

Model: the full-precision reference, as an F32 GGUF that llama-quantize writes from the
default model's Q4_1 GGUF (--allow-requantize): both tools run that one file, so both
multiply F32 weights. The script first checks that `lrq eval` gives the same perplexity
on that file as on `default` (our own dequantization of the Q4_1), i.e. that the weights
are the reference's.

Text and windows: the project's held-out evaluation text (`lrq text --part evaluation`),
tokenized by each tool as a whole with BOS as the model asks (SmolLM2: none), cut into
non-overlapping windows of --ctx tokens, the first --windows of them. The script checks
that both tokenizers give the same ids (llama-tokenize against `lrq tokenize`).

What each tool computes per window: one forward pass over --ctx tokens (llama-perplexity
with -b = -c: one window per decode, as ours). `lrq eval` by default applies the LM head
to every position and scores ctx-1 predictions; llama-perplexity asks for logits of the
second half only and scores ctx/2-1 predictions (first = ctx/2), and puts BOS in the first
position of every window when the model adds BOS (SmolLM2 does not). `lrq eval --score
second-half` follows llama-perplexity's rule, so it does the same work and must give the
same perplexity (checked: relative difference printed, must be under 1e-4). The default
mode is timed too: it does the same block work and twice the LM-head work (576 x 49152 on
SmolLM2, about a fifth of its FLOPs per token).

Timing: the tools run interleaved (A B A B ...) --rounds times; each run is timed as a
whole process (model load and tokenization included) and by the time the tool reports
for its evaluation loop (ours: the JSON `seconds`; llama.cpp: the time between its log
lines announcing the chunks and the final estimate, which covers decoding, log-softmax
and scoring; libllama's own decode counter is kept in the JSON as llama_decode_s).
The table shows medians and the ratio ours / llama.cpp. On a loaded machine the times
are not meaningful.
"""
import argparse
import datetime
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_cpp_common as lc  # noqa: E402


def llama_perplexity_cmd(bin_dir, gguf, text, args):
    return [os.path.join(bin_dir, "llama-perplexity"), "-m", gguf, "-f", text,
            "-c", args.ctx, "-b", args.ctx, "-ub", args.ctx, "--chunks", args.windows,
            "-t", args.threads, "-tb", args.threads, "--no-escape"] + lc.LOG_OPTIONS


def lrq_eval_cmd(lrq, gguf, text, args, score="all"):
    return [lrq, "eval", gguf, "--text", text, "--seq-len", args.ctx, "--max-windows",
            args.windows, "--threads", args.threads, "--score", score, "--json", "--quiet"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lrq", default=os.path.join(lc.ROOT, "build", "app", "lrq"))
    ap.add_argument("--llama-bin", help="directory of the llama.cpp tools "
                    "(default: bench/llama_cpp_tools.sh builds or finds them)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--text", default="evaluation",
                    help="evaluation, calibration, out-of-domain or a file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--windows", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="also write the results as JSON to this file")
    args = ap.parse_args()
    if args.windows < 2:
        raise SystemExit("--windows must be at least 2 (llama-perplexity needs 2 windows of text)")
    lrq = os.path.abspath(args.lrq)
    bin_dir = lc.llama_bin(args.llama_bin)
    source = lc.default_model_path(lrq, args.model)
    f32 = lc.f32_reference(bin_dir, source, args.threads)
    text = lc.write_text(lrq, args.text, lc.WORK)
    for key in ("ctx", "windows", "threads"):
        setattr(args, key, str(getattr(args, key)))

    lc.log("checking the F32 file holds our reference weights (lrq eval on both)")
    reference = lc.check_reference(lrq, args.model, f32, text, int(args.ctx), 2,
                                   int(args.threads))
    lc.log("checking both tokenizers split the text the same way")
    tokens = lc.compare_tokens(lrq, args.model, bin_dir, f32, text)

    ours_cmd = lrq_eval_cmd(lrq, f32, text, args)
    half_cmd = lrq_eval_cmd(lrq, f32, text, args, "second-half")
    theirs_cmd = llama_perplexity_cmd(bin_dir, f32, text, args)
    rounds = []
    for r in range(int(args.rounds)):
        lc.log("round %d/%s: lrq eval" % (r + 1, args.rounds))
        out, _, wall_ours, _ = lc.run(ours_cmd)
        ours = json.loads(out.strip().splitlines()[-1])
        lc.log("round %d/%s: lrq eval --score second-half" % (r + 1, args.rounds))
        out, _, wall_half, _ = lc.run(half_cmd)
        half = json.loads(out.strip().splitlines()[-1])
        lc.log("round %d/%s: llama-perplexity" % (r + 1, args.rounds))
        out, err, wall_theirs, _ = lc.run(theirs_cmd)
        theirs = lc.parse_perplexity_log(out + err)
        if "ppl" not in theirs or theirs.get("chunks") != int(args.windows):
            raise SystemExit("could not read llama-perplexity's result (or it ran %s windows, "
                             "not %s):\n%s" % (theirs.get("chunks"), args.windows, err[-2000:]))
        rounds.append({
            "lrq_wall_s": wall_ours, "lrq_eval_s": ours["seconds"],
            "lrq_perplexity": ours["perplexity"], "lrq_windows": ours["windows"],
            "lrq_scored_tokens": ours["tokens"],
            "half_wall_s": wall_half, "half_eval_s": half["seconds"],
            "half_perplexity": half["perplexity"], "half_scored_tokens": half["tokens"],
            "llama_wall_s": wall_theirs, "llama_eval_s": theirs.get("loop_s"),
            "llama_decode_s": theirs["decode_ms"] / 1000.0 if "decode_ms" in theirs else None,
            "llama_add_bos": theirs.get("add_bos"), "llama_flash_attn": theirs.get("flash_attn"),
            "llama_perplexity": theirs["ppl"], "llama_windows": theirs["chunks"],
            "llama_scored_tokens": theirs["chunks"] * (int(args.ctx) - 1 - int(args.ctx) // 2),
        })

    med = {k: lc.median([r[k] for r in rounds]) for k in rounds[0]
           if isinstance(rounds[0][k], (int, float)) and not isinstance(rounds[0][k], bool)}
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "cpus": os.cpu_count(),
        "llama_cpp": lc.llama_version(bin_dir),
        "model": source, "f32_gguf": f32, "text": text,
        "threads": int(args.threads), "ctx": int(args.ctx), "windows": int(args.windows),
        "rounds": rounds, "median": med,
        "ratio_wall": med["lrq_wall_s"] / med["llama_wall_s"],
        "ratio_eval": (med["lrq_eval_s"] / med["llama_eval_s"]) if med["llama_eval_s"] else None,
        "ratio_wall_same_positions": med["half_wall_s"] / med["llama_wall_s"],
        "ratio_eval_same_positions": (med["half_eval_s"] / med["llama_eval_s"])
        if med["llama_eval_s"] else None,
        "same_positions_relative_ppl_difference":
            abs(med["half_perplexity"] / med["llama_perplexity"] - 1.0),
        "reference_check": reference, "tokens": tokens,
        "commands": {"lrq": lc.quoted(ours_cmd), "lrq_second_half": lc.quoted(half_cmd),
                     "llama": lc.quoted(theirs_cmd)},
        "reproduce": lc.quoted([sys.argv[0]] + sys.argv[1:]),
    }

    print("perplexity evaluation, %s windows of %s tokens, %s threads (%s)" %
          (args.windows, args.ctx, args.threads, result["llama_cpp"]))
    print("model %s\ntext %s\n" % (f32, text))
    rows = []
    half = "last %d positions" % (int(args.ctx) - 1 - int(args.ctx) // 2)
    for name, prefix, scored in (("lrq eval", "lrq", "all %d positions" % (int(args.ctx) - 1)),
                                 ("lrq eval --score second-half", "half", half),
                                 ("llama-perplexity", "llama", half)):
        rows.append([name, lc.fmt(med[prefix + "_wall_s"], 2), lc.fmt(med[prefix + "_eval_s"], 2),
                     " ".join(lc.fmt(r[prefix + "_wall_s"], 2) for r in rounds),
                     lc.fmt(med[prefix + "_perplexity"]), scored])
    rows.append(["ours (all) / llama.cpp", lc.fmt(result["ratio_wall"], 2),
                 lc.fmt(result["ratio_eval"], 2), "", "", ""])
    rows.append(["ours (second half) / llama.cpp", lc.fmt(result["ratio_wall_same_positions"], 2),
                 lc.fmt(result["ratio_eval_same_positions"], 2), "", "", ""])
    print(lc.markdown_table(["tool", "wall s (median)", "eval s (median)", "wall s per round",
                             "perplexity", "scored per window"], rows))
    print()
    print("reference check: lrq eval default %.6f, lrq eval F32 GGUF %.6f (relative %.1e): %s" %
          (reference["lrq_eval_default"], reference["lrq_eval_f32_gguf"],
           reference["relative_difference"], "same weights" if reference["equal"] else
           "DIFFERENT"))
    if tokens["lrq_tokenize"] is None:
        print("tokens: llama-tokenize %d; this lrq has no `tokenize` command to compare" %
              tokens["llama_tokenize"])
    else:
        print("tokens: llama-tokenize %d, lrq tokenize %d, ids %s" %
              (tokens["llama_tokenize"], tokens["lrq_tokenize"],
               "identical" if tokens["same_ids"] else
               "differ from position %s" % tokens["first_difference"]))
    same = result["same_positions_relative_ppl_difference"] < 1e-4
    print("same positions: lrq eval --score second-half %.6f, llama-perplexity %.6f "
          "(relative %.1e): %s" % (med["half_perplexity"], med["llama_perplexity"],
                                   result["same_positions_relative_ppl_difference"],
                                   "equal" if same else "DIFFERENT"))
    print("commands:\n  %s\n  %s\n  %s" % (result["commands"]["lrq"],
                                          result["commands"]["lrq_second_half"],
                                          result["commands"]["llama"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    ok = reference["equal"] and tokens["same_ids"] is not False and same
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
