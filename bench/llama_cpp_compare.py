#!/usr/bin/env python3
"""Our GGUF exports against llama.cpp's own quantizations of the same model, measured by
llama.cpp itself: mean KL divergence to the full-precision model, top-1 agreement
("Same top p") and perplexity, from `llama-perplexity --kl-divergence`.

usage: bench/llama_cpp_compare.py [--lrq build/app/lrq] [--llama-bin DIR] [--model default]
           [--formats q4_0,q4_k] [--methods rtn,gptq,flexround,lrq] [--imatrix both|no|only]
           [--text out-of-domain|evaluation|FILE] [--windows 20] [--ctx 512]
           [--imatrix-chunks 100] [--f32-embeddings | --no-f32-embeddings] [--pure]
           [--preset demo] [--threads 2] [--lrq-eval-llama] [--json FILE]

Rows:
  F32 reference  llama-quantize --allow-requantize of the default model's Q4_1 GGUF to F32:
                 the dequantized weights the workbench calls full precision. Its logits
                 on the text are saved once (--kl-divergence-base) and every row is
                 measured against them.
  llama.cpp F    llama-quantize F32.gguf OUT F, for F in --formats (Q4_K means llama.cpp's
                 Q4_K_M mixture), plain and with an importance matrix that llama-imatrix
                 computes on the project's calibration text (`lrq text --part calibration`,
                 the first --imatrix-chunks windows of --ctx tokens).
  lrq M          `lrq quantize default --method M --scheme gguf-F --gguf OUT.gguf`, skipped
                 with a message when this lrq cannot write GGUF files or lacks the scheme.

By default llama-quantize is given --token-embedding-type f32 --output-tensor-type f32:
our GGUF keeps the (tied) embedding in F32, so both sides quantize the same tensors
(--no-f32-embeddings for llama.cpp's own choice). On SmolLM2-135M the hidden size (576)
is not a multiple of 256, so llama.cpp's K-quants fall back to 32-blocks for most
tensors (Q4_K -> Q5_0, Q6_K -> Q8_0): the table counts those fallbacks, and bits per
weight are llama.cpp's own figure for the whole file.

Evaluation text: the out-of-domain text by default (nothing calibrates on it), cut into
--windows windows of --ctx tokens; llama-perplexity scores the second half of each
window. For our files `lrq eval OUT.gguf` (all positions of the same windows) is printed
beside llama.cpp's perplexity, with its own reference perplexity: the two tools score
different positions, so compare each tool's ratio to its reference, not the raw values.
"""
import argparse
import datetime
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_cpp_common as lc  # noqa: E402

LLAMA_TYPES = {"q4_0": "Q4_0", "q4_k": "Q4_K", "q4_1": "Q4_1", "q5_0": "Q5_0", "q8_0": "Q8_0",
               "q5_1": "Q5_1", "q4_k_s": "Q4_K_S", "q4_k_m": "Q4_K_M", "q6_k": "Q6_K"}


def tool(bin_dir, name):
    return os.path.join(bin_dir, name)


def imatrix_file(bin_dir, f32, lrq, args, work):
    out = os.path.join(work, "imatrix-c%s-n%s.gguf" % (args.ctx, args.imatrix_chunks))
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(f32):
        return out, None
    calib = lc.write_text(lrq, "calibration", work)
    cmd = [tool(bin_dir, "llama-imatrix"), "-m", f32, "-f", calib, "-o", out + ".part.gguf",
           "-c", args.ctx, "-b", args.ctx, "--chunks", args.imatrix_chunks, "-t", args.threads,
           "--no-ppl", "--no-escape"]
    lc.log("importance matrix:", lc.quoted(cmd))
    _, _, seconds, _ = lc.run(cmd)
    os.replace(out + ".part.gguf", out)
    return out, seconds


def llama_quantize(bin_dir, f32, fmt, imatrix, args, work):
    name = "llama-%s%s%s.gguf" % (fmt, "-imatrix" if imatrix else "",
                                  "-pure" if args.pure else "")
    out = os.path.join(work, name)
    cmd = [tool(bin_dir, "llama-quantize")]
    if imatrix:
        cmd += ["--imatrix", imatrix]
    if args.f32_embeddings:
        cmd += ["--token-embedding-type", "f32", "--output-tensor-type", "f32"]
    if args.pure:
        cmd += ["--pure"]
    cmd += [f32, out, LLAMA_TYPES[fmt], args.threads]
    lc.log("quantizing:", lc.quoted(cmd))
    stdout, stderr, seconds, _ = lc.run(cmd)
    text = stdout + stderr
    fallbacks = sum(1 for line in text.splitlines() if "falling back to" in line)
    targets = {}
    for line in text.splitlines():
        if "falling back to" in line:
            target = line.rsplit("falling back to", 1)[1].strip()
            targets[target] = targets.get(target, 0) + 1
    return out, {"command": lc.quoted(cmd), "seconds": seconds, "fallbacks": fallbacks,
                 "fallback_types": targets}


def lrq_supports_gguf(lrq):
    out, _, _, rc = lc.run([lrq, "quantize", "--help"], check=False)
    return rc == 0 and "--gguf" in out


def lrq_scheme_error(lrq, model, fmt, work):
    """Why this lrq cannot quantize onto gguf-FORMAT (None when it can): its own check of
    the request (--dry-run runs nothing)."""
    out, err, _, rc = lc.run([lrq, "quantize", model, "--method", "rtn", "--scheme",
                              "gguf-" + fmt, "--gguf", os.path.join(work, "dry-run.gguf"),
                              "--dry-run", "--quiet"], check=False)
    return None if rc == 0 else (err.strip().splitlines() or ["exit %d" % rc])[-1]


def lrq_quantize(lrq, model, method, fmt, args, work):
    out = os.path.join(work, "lrq-%s-%s.gguf" % (method, fmt))
    cmd = [lrq, "quantize", model, "--method", method, "--scheme", "gguf-" + fmt,
           "--gguf", out, "--preset", args.preset, "--no-eval", "--no-ood-eval",
           "--no-spectra", "--threads", args.threads, "--quiet"]
    lc.log("quantizing:", lc.quoted(cmd))
    if os.path.exists(out):
        os.remove(out)  # an export never replaces a file unless told to
    _, _, seconds, _ = lc.run(cmd)
    return out, {"command": lc.quoted(cmd), "seconds": seconds}


def kld_base(bin_dir, f32, text, args, work):
    base = os.path.join(work, "f32-base-c%s-w%s-%s.kld" % (
        args.ctx, args.windows, os.path.splitext(os.path.basename(text))[0]))
    cmd = [tool(bin_dir, "llama-perplexity"), "-m", f32, "-f", text, "-c", args.ctx,
           "-b", args.ctx, "--chunks", args.windows, "-t", args.threads,
           "--kl-divergence-base", base + ".part", "--no-escape"] + lc.LOG_OPTIONS
    lc.log("reference logits:", lc.quoted(cmd))
    stdout, stderr, seconds, _ = lc.run(cmd)
    os.replace(base + ".part", base)
    figures = lc.parse_perplexity_log(stdout + stderr)
    if "ppl" not in figures:
        raise SystemExit("could not read the F32 perplexity:\n" + stderr[-2000:])
    return base, figures, lc.quoted(cmd)


def kld_of(bin_dir, gguf, base, args):
    cmd = [tool(bin_dir, "llama-perplexity"), "-m", gguf, "--kl-divergence-base", base,
           "--kl-divergence", "-c", args.ctx, "-b", args.ctx, "-t", args.threads] + lc.LOG_OPTIONS
    stdout, stderr, seconds, _ = lc.run(cmd)
    figures = lc.parse_perplexity_log(stdout + stderr)
    for key in ("ppl_q", "kld", "same_top_p"):
        if key not in figures:
            raise SystemExit("could not read %s from llama-perplexity on %s:\n%s" %
                             (key, gguf, stderr[-2000:]))
    figures["command"] = lc.quoted(cmd)
    figures["seconds"] = seconds
    return figures


def lrq_eval(lrq, gguf, f32, text, args):
    """`lrq eval` of the file against the F32 reference on the same windows."""
    proc_args = ["eval", gguf, "--reference", f32, "--text", text, "--seq-len", args.ctx,
                 "--max-windows", args.windows, "--threads", args.threads]
    out, err, _, rc = lc.run([lrq] + proc_args + ["--json", "--quiet"], check=False)
    if rc != 0:
        return {"error": (err.strip().splitlines() or ["exit %d" % rc])[-1]}
    j = json.loads(out.strip().splitlines()[-1])
    return {"perplexity": j["perplexity"], "reference_perplexity": j["reference_perplexity"],
            "kl": j["kl"], "top1": j["top1"], "command": lc.quoted([lrq] + proc_args)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lrq", default=os.path.join(lc.ROOT, "build", "app", "lrq"))
    ap.add_argument("--llama-bin", help="directory of the llama.cpp tools "
                    "(default: bench/llama_cpp_tools.sh builds or finds them)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--formats", default="q4_0,q4_k",
                    help="comma-separated: " + ",".join(LLAMA_TYPES))
    ap.add_argument("--methods", default="rtn,gptq,flexround,lrq",
                    help="our methods, each exported as gguf-FORMAT; empty for none")
    ap.add_argument("--imatrix", choices=["both", "no", "only"], default="both",
                    help="llama.cpp rows without and/or with an importance matrix")
    ap.add_argument("--imatrix-chunks", type=int, default=100)
    ap.add_argument("--text", default="out-of-domain",
                    help="evaluation, out-of-domain or a file")
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default="demo", help="our methods' run size")
    emb = ap.add_mutually_exclusive_group()
    emb.add_argument("--f32-embeddings", dest="f32_embeddings", action="store_true",
                     default=True, help="llama-quantize keeps token embedding/output F32 "
                     "(default, as our export)")
    emb.add_argument("--no-f32-embeddings", dest="f32_embeddings", action="store_false")
    ap.add_argument("--pure", action="store_true",
                    help="llama-quantize --pure: no K-quant mixture")
    ap.add_argument("--lrq-eval-llama", action="store_true",
                    help="also run `lrq eval` on llama.cpp's files")
    ap.add_argument("--workdir", default=os.path.join(lc.WORK, "compare"))
    ap.add_argument("--json", help="also write the results as JSON to this file")
    args = ap.parse_args()

    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    for fmt in formats:
        if fmt not in LLAMA_TYPES:
            raise SystemExit("unknown format '%s' (known: %s)" % (fmt, ", ".join(LLAMA_TYPES)))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.windows < 2:
        raise SystemExit("--windows must be at least 2 (llama-perplexity needs 2 windows)")
    lrq = os.path.abspath(args.lrq)
    bin_dir = lc.llama_bin(args.llama_bin)
    for key in ("ctx", "windows", "threads", "imatrix_chunks"):
        setattr(args, key, int(getattr(args, key)))
    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    source = lc.default_model_path(lrq, args.model)
    f32 = lc.f32_reference(bin_dir, source, args.threads)
    text = lc.write_text(lrq, args.text, work)
    # From here on the numbers are handed to the tools as strings.
    sargs = argparse.Namespace(**{k: (str(v) if isinstance(v, int) and not isinstance(v, bool)
                                      else v) for k, v in vars(args).items()})

    base, base_figures, base_cmd = kld_base(bin_dir, f32, text, sargs, work)
    rows = [{"name": "F32 reference", "source": "llama-quantize --allow-requantize F32",
             "file": f32, "imatrix": False, "bpw": base_figures.get("bpw"),
             "ppl": base_figures["ppl"], "kld": 0.0, "same_top_p": 1.0,
             "command": base_cmd}]
    skipped, scheme_errors = [], {}
    if methods:
        if not lrq_supports_gguf(lrq):
            skipped.append("all lrq rows: %s has no `quantize --gguf` yet" % lrq)
            methods = []
        else:
            scheme_errors = {fmt: lrq_scheme_error(lrq, args.model, fmt, work)
                             for fmt in formats}
    if methods or args.lrq_eval_llama:
        rows[0]["lrq_eval"] = lrq_eval(lrq, f32, f32, text, sargs)

    imatrix, imatrix_seconds = None, None
    if args.imatrix != "no" and formats:
        imatrix, imatrix_seconds = imatrix_file(bin_dir, f32, lrq, sargs, work)
    variants = {"both": [False, True], "no": [False], "only": [True]}[args.imatrix]
    for fmt in formats:
        for with_imatrix in variants:
            out, info = llama_quantize(bin_dir, f32, fmt, imatrix if with_imatrix else None,
                                       sargs, work)
            figures = kld_of(bin_dir, out, base, sargs)
            row = {"name": "llama.cpp " + LLAMA_TYPES[fmt] + (" + imatrix" if with_imatrix
                                                              else ""),
                   "source": "llama-quantize", "file": out, "imatrix": with_imatrix,
                   "bpw": figures.get("bpw"), "ppl": figures["ppl_q"], "kld": figures["kld"],
                   "same_top_p": figures["same_top_p"], "fallbacks": info["fallbacks"],
                   "fallback_types": info["fallback_types"],
                   "command": info["command"] + " && " + figures["command"]}
            if args.lrq_eval_llama:
                row["lrq_eval"] = lrq_eval(lrq, out, f32, text, sargs)
            rows.append(row)
            lc.log("%s: KLD %.5f, same top p %.4f, PPL %.4f" %
                   (row["name"], row["kld"], row["same_top_p"], row["ppl"]))

    for fmt in formats:
        scheme = "gguf-" + fmt
        if methods and scheme_errors.get(fmt):
            skipped.append("lrq rows for %s: %s" % (scheme, scheme_errors[fmt]))
            continue
        for method in methods:
            out, info = lrq_quantize(lrq, args.model, method, fmt, sargs, work)
            figures = kld_of(bin_dir, out, base, sargs)
            ours = lrq_eval(lrq, out, f32, text, sargs)
            rows.append({"name": "lrq %s (%s)" % (method, scheme), "source": "lrq quantize",
                         "file": out, "imatrix": False, "bpw": figures.get("bpw"),
                         "ppl": figures["ppl_q"], "kld": figures["kld"],
                         "same_top_p": figures["same_top_p"], "lrq_eval": ours,
                         "command": info["command"] + " && " + figures["command"]})

    header = ["model", "BPW", "K-quant fallbacks", "mean KLD", "same top p", "PPL (llama.cpp)",
              "PPL (lrq eval)", "lrq/llama PPL", "PPL/ref llama, lrq", "KL (lrq eval)",
              "top-1 (lrq eval)"]
    table = []
    reference_ppl = rows[0]["ppl"]
    for row in rows:
        ours = row.get("lrq_eval") or {}
        if "error" in ours:
            lrq_cells = ["failed: " + ours["error"][:60], "", "", "", ""]
        elif ours:
            rel = ours["perplexity"] / row["ppl"] - 1.0
            to_ref = "%+.2f%%, %+.2f%%" % (
                100 * (row["ppl"] / reference_ppl - 1.0),
                100 * (ours["perplexity"] / ours["reference_perplexity"] - 1.0))
            lrq_cells = [lc.fmt(ours["perplexity"]), "%+.2f%%" % (100 * rel), to_ref,
                         lc.fmt(ours["kl"], 5), lc.fmt(ours["top1"])]
        else:
            lrq_cells = ["–", "", "", "", ""]
        fb = row.get("fallbacks")
        fb_cell = "–" if fb is None else (
            "none" if fb == 0 else "%d (%s)" % (fb, ", ".join(
                "%s %d" % (k, v) for k, v in sorted(row["fallback_types"].items()))))
        table.append([row["name"], lc.fmt(row["bpw"], 2), fb_cell, lc.fmt(row["kld"], 5),
                      "%.2f%%" % (100 * row["same_top_p"]), lc.fmt(row["ppl"])] + lrq_cells)

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "cpus": os.cpu_count(),
        "llama_cpp": lc.llama_version(bin_dir), "model": source, "text": text,
        "ctx": args.ctx, "windows": args.windows, "threads": args.threads,
        "imatrix": {"file": imatrix, "chunks": args.imatrix_chunks, "seconds": imatrix_seconds},
        "llama_quantize_f32_embeddings": args.f32_embeddings, "pure": args.pure,
        "rows": rows, "skipped": skipped,
        "reproduce": lc.quoted([sys.argv[0]] + sys.argv[1:]),
    }
    print("KL divergence to the F32 reference, measured by llama-perplexity (%s)" %
          result["llama_cpp"])
    print("model %s; text %s, %d windows of %d tokens (llama.cpp scores the last %d of each)" %
          (source, text, args.windows, args.ctx, args.ctx - 1 - args.ctx // 2))
    print("llama-quantize: %s%s; imatrix: %s" % (
        "--token-embedding-type f32 --output-tensor-type f32" if args.f32_embeddings
        else "its own embedding/output types", ", --pure" if args.pure else "",
        "%d windows of the calibration text" % args.imatrix_chunks if imatrix else "none"))
    print()
    print(lc.markdown_table(header, table))
    print()
    for line in skipped:
        print("skipped:", line)
    print("reproduce:", result["reproduce"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
