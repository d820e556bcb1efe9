#!/usr/bin/env python3
"""Produces docs/RESULTS.md: held-out perplexity, KL and top-1 agreement of every
method under every named scheme on the default model, by running `lrq quantize`.

usage: bench/results.py [--lrq build/app/lrq] [--methods rtn,gptq,...]
                        [--schemes W4A16,...] [--preset demo] [--eval-windows N]
                        [--out docs/RESULTS.md] [--store FILE]
Rows are kept in docs/RESULTS.json beside the table: a run of a subset of methods or
schemes replaces those rows and keeps the others, so the table can be filled in steps.
Every run is also recorded in the run store (see `lrq runs list`).
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

METHODS = ["rtn", "gptq", "flexround", "lrq", "lqer", "l2qer", "lrqat"]
SCHEMES = ["W3A16", "W3A16-g128", "W4A16", "W4A8-KV8", "W8A8"]
# SmoothQuant belongs with 8-bit activations on a static per-tensor grid.
SMOOTHQUANT = {"W8A8"}


def run(cmd):
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or ["(no message)"]
        return None, time.time() - start, last[0]
    return proc.stdout, time.time() - start, ""


def final_event(stdout):
    for line in reversed(stdout.strip().splitlines()):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "finished" or "perplexity" in event:
            return event
    return {}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lrq", default="build/app/lrq")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--eval-windows", type=int, default=0, help="0 = the whole held-out text")
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--out", default="docs/RESULTS.md")
    ap.add_argument("--store", default="")
    args = ap.parse_args()
    store = ["--store", args.store] if args.store else []
    evalopts = ["--eval-seq-len", str(args.eval_seq_len)]
    if args.eval_windows:
        evalopts += ["--eval-windows", str(args.eval_windows)]

    rows = []
    out, secs, err = run([args.lrq, "eval", "default", "--json", "--quiet", "--seq-len",
                          str(args.eval_seq_len)] +
                         (["--max-windows", str(args.eval_windows)] if args.eval_windows else []))
    fp = json.loads(out) if out else {}
    rows.append(("full precision", "-", fp.get("perplexity"), 0.0, 1.0, secs, None, None, None,
                 err))
    print(f"full precision: {fp.get('perplexity')}", file=sys.stderr)

    for scheme in args.schemes.split(","):
        for method in args.methods.split(","):
            cmd = [args.lrq, "quantize", "default", "--method", method, "--scheme", scheme,
                   "--preset", args.preset, "--json", "--quiet", "--no-spectra"] + evalopts + store
            if scheme in SMOOTHQUANT:
                cmd.append("--smoothquant")
            out, secs, err = run(cmd)
            metrics = final_event(out).get("metrics", {}) if out else {}
            rows.append((method + (" + SmoothQuant" if scheme in SMOOTHQUANT else ""), scheme,
                         metrics.get("perplexity"), metrics.get("kl"), metrics.get("top1"), secs,
                         metrics.get("peak_rss_mib"), metrics.get("recon_train_loss_mean"),
                         metrics.get("recon_heldout_loss_mean"), err))
            print(f"{scheme} {method}: {metrics} ({secs:.0f} s) {err}", file=sys.stderr)

    # Merge with the rows of earlier invocations (same evaluation settings only).
    sidecar = os.path.splitext(args.out)[0] + ".json"
    settings = {"preset": args.preset, "eval_windows": args.eval_windows,
                "eval_seq_len": args.eval_seq_len}
    merged = {}
    if os.path.exists(sidecar):
        with open(sidecar, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("settings") == settings:
            for row in old.get("rows", []):
                if len(row) == 7:  # written before peak RSS was recorded
                    row = row[:6] + [None] + row[6:]
                if len(row) == 8:  # written before reconstruction losses were recorded
                    row = row[:7] + [None, None] + row[7:]
                merged[(row[0], row[1])] = tuple(row)
    for row in rows:
        merged[(row[0], row[1])] = row
    order = {s: i for i, s in enumerate(SCHEMES)}
    base = {m: i for i, m in enumerate(METHODS)}
    rows = sorted(merged.values(),
                  key=lambda r: (r[1] != "-", order.get(r[1], 99),
                                 base.get(r[0].split(" ")[0], 99)))
    with open(sidecar, "w", encoding="utf-8") as f:
        json.dump({"settings": settings, "rows": [list(r) for r in rows]}, f, indent=1)

    def fmt(v, digits):
        return "-" if v is None else f"{v:.{digits}f}"

    def ratio(heldout, train):
        return "-" if heldout is None or not train else f"{heldout / train:.2f}"

    lines = [
        "# Results",
        "",
        "Produced by `bench/results.py` on "
        f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores; preset `{args.preset}`, evaluation windows of "
        f"{args.eval_seq_len} tokens"
        + (f" (first {args.eval_windows})" if args.eval_windows else " (whole held-out text)")
        + ".",
        "",
        "Model: SmolLM2-135M-Instruct. **Its full-precision reference is dequantized from "
        "Q4_1** (the only published form we can fetch), so \"full precision\" below means "
        "those dequantized weights. Text: the held-out part of the default text (the Jargon "
        "File; every 20th paragraph). KL is KL(P_reference || P_quantized) per predicted "
        "token in nats; top-1 is the fraction of positions where both models' argmax agree. "
        "W8A8 rows use SmoothQuant (alpha 0.5, all groups). Seconds are the whole `lrq "
        "quantize` run (load, calibration, method, evaluation) without per-layer spectra "
        "(`--no-spectra`; recording them adds about 7 s); peak RSS is the process's. "
        "Block-wise reconstruction methods: *recon train* is the mean over blocks of the "
        "final block output error on the training samples, *held-out* the same on "
        "calibration samples never trained on (`--heldout-samples`), and *ratio* "
        "held-out / train: above 1, the blocks fit their training samples better than unseen "
        "text.",
        "",
        "| method | scheme | perplexity | KL | top-1 | seconds | peak RSS MiB | recon train | "
        "held-out | ratio | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for method, scheme, ppl, kl, top1, secs, rss, train, heldout, err in rows:
        lines.append(f"| {method} | {scheme} | {fmt(ppl, 3)} | {fmt(kl, 4)} | {fmt(top1, 4)} | "
                     f"{secs:.0f} | {fmt(rss, 0)} | {fmt(train, 4)} | {fmt(heldout, 4)} | "
                     f"{ratio(heldout, train)} | {err} |")
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
