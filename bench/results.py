#!/usr/bin/env python3
"""Produces docs/RESULTS.md: fidelity (KL, top-1) and perplexity of every method under
every named scheme on the default model, on two texts, by running `lrq quantize`.

usage: bench/results.py [--lrq build/app/lrq] [--methods rtn,gptq,...]
                        [--schemes W4A16,...] [--preset demo] [--seeds 0,1,2]
                        [--lr METHOD=RATE,...] [--lr-from docs/LR_SWEEP.json]
                        [--eval-windows N] [--out docs/RESULTS.md] [--store FILE]
                        [--report-only]

--lr-from takes each method's rate from bench/lr_sweep.py's choices for the same preset:
the sweep of the same scheme where there is one, else the sweep of that method at another
scheme of the preset (the table's lr column shows the rate used). --lr overrides it.

Rows are kept in docs/RESULTS.json beside the table, keyed by (preset, scheme, method,
seed, settings): a run of a subset replaces those rows and keeps the others, so the
tables can be filled in steps (the long ones in the background, across days). With
several seeds a cell shows mean ± sample standard deviation over the seeds.
Everything from the first line "## Conclusions" or "## llama.cpp comparison" of an
existing output file to its end is kept: the conclusions are written by hand from the
numbers above them, the llama.cpp table comes from bench/llama_cpp_compare.py.
Every run is also recorded in the run store (see `lrq runs list`).
"""
import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time

METHODS = ["rtn", "gptq", "rtn-learned-step", "flexround", "lrq", "lqer", "l2qer", "lrqat"]
SCHEMES = ["W4A16", "W3A16", "W3A16-g128", "W4A8-KV8", "W8A8"]
# SmoothQuant belongs with 8-bit activations on a static per-tensor grid.
SMOOTHQUANT = {"W8A8"}
# What a row records from the run's metrics.
FIELDS = ["bits_per_weight", "kl", "ood_kl", "top1", "ood_top1", "perplexity",
          "ood_perplexity", "reference_perplexity", "ood_reference_perplexity",
          "recon_heldout_loss_mean", "recon_train_loss_mean", "peak_rss_mib"]


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
        if event.get("event") == "finished":
            return event
    return {}


def block_ratios(lrq, run_id, store):
    """Means over the blocks of final / initial reconstruction loss, on the training and
    on the held-out samples: scale-free, so blocks whose outputs carry a few very large
    activations do not dominate them as they dominate the mean losses."""
    if not run_id:
        return None, None
    proc = subprocess.run([lrq, "runs", "show", run_id, "--json"] + store, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        return None, None
    records = json.loads(proc.stdout).get("block_records") or []
    def ratio(final, initial):
        values = [r[final] / r[initial] for r in records
                  if r.get(final) is not None and r.get(initial)]
        return sum(values) / len(values) if values else None
    return (ratio("final_loss", "initial_loss"),
            ratio("heldout_final_loss", "heldout_initial_loss"))


def mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None, len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return m, sd, len(values)


def cell(values, digits, scale=1.0):
    m, sd, n = mean_sd([None if v is None else v * scale for v in values])
    if m is None:
        return "-"
    return f"{m:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lrq", default="build/app/lrq")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--lr", default="", help="per-method learning rates, e.g. lrq=1e-2,flexround=3e-3")
    ap.add_argument("--lr-from", default="",
                    help="rates chosen by bench/lr_sweep.py (docs/LR_SWEEP.json)")
    ap.add_argument("--extra", default="", help="more quantize options, e.g. '--rank 64'")
    ap.add_argument("--eval-windows", type=int, default=0, help="0 = the whole texts")
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--out", default="docs/RESULTS.md")
    ap.add_argument("--store", default="")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the markdown from the .json beside it, running nothing")
    args = ap.parse_args()
    store = ["--store", args.store] if args.store else []
    evalopts = ["--eval-seq-len", str(args.eval_seq_len)]
    if args.eval_windows:
        evalopts += ["--eval-windows", str(args.eval_windows)]
    rates = dict(kv.split("=") for kv in args.lr.split(",") if kv)
    sweep = {}
    if args.lr_from:
        with open(args.lr_from, encoding="utf-8") as f:
            sweep = json.load(f)

    def rate_for(scheme, method):
        if method in rates:
            return rates[method]
        chosen = sweep.get(f"{args.preset}/{scheme}/{method}", {}).get("best")
        if chosen is None:
            others = sorted(k for k, v in sweep.items() if v.get("best") is not None
                            and k.startswith(args.preset + "/") and k.endswith("/" + method))
            chosen = sweep[others[0]]["best"] if others else None
        return None if chosen is None else format(chosen, "g")

    sidecar = os.path.splitext(args.out)[0] + ".json"
    old = {}
    if os.path.exists(sidecar):
        with open(sidecar, encoding="utf-8") as f:
            old = json.load(f)
    if args.report_only:  # the sidecar's own settings and rows, whatever the options say
        write_markdown(args, old["settings"], old["rows"])
        return
    settings = {"eval_windows": args.eval_windows, "eval_seq_len": args.eval_seq_len}
    rows = {}
    key = lambda r: (r["preset"], r["scheme"], r["method"], r["seed"], r["lr"], r["extra"])
    if old.get("settings") == settings and old.get("format") == 2:
        for r in old.get("rows", []):
            rows[key(r)] = r

    # Each row is written as soon as its run ends, so that stopping a long
    # regeneration keeps the rows already measured.
    for scheme in args.schemes.split(","):
        for method in args.methods.split(","):
            for seed in args.seeds.split(","):
                cmd = [args.lrq, "quantize", "default", "--method", method, "--scheme", scheme,
                       "--preset", args.preset, "--seed", seed, "--json", "--quiet",
                       "--no-spectra"] + evalopts + store + args.extra.split()
                lr = rate_for(scheme, method)
                if lr is not None:
                    cmd += ["--lr", lr]
                if scheme in SMOOTHQUANT:
                    cmd.append("--smoothquant")
                out, secs, err = run(cmd)
                done = final_event(out) if out else {}
                metrics = done.get("metrics", {})
                row = {"preset": args.preset, "scheme": scheme, "method": method,
                       "seed": int(seed), "lr": lr or "preset",
                       "extra": args.extra, "smoothquant": scheme in SMOOTHQUANT,
                       "run_id": done.get("run_id"), "seconds": secs, "error": err}
                row.update({f: metrics.get(f) for f in FIELDS})
                row["recon_train_ratio"], row["recon_heldout_ratio"] = block_ratios(
                    args.lrq, done.get("run_id"), store)
                rows[key(row)] = row
                print(f"{args.preset} {scheme} {method} seed {seed}: KL {metrics.get('kl')} "
                      f"ood KL {metrics.get('ood_kl')} ({secs:.0f} s) {err}", file=sys.stderr)
                with open(sidecar, "w", encoding="utf-8") as f:
                    json.dump({"format": 2, "settings": settings, "rows": list(rows.values())},
                              f, indent=1)
                write_markdown(args, settings, list(rows.values()))


# The block-wise reconstructions, whose block records hold reconstruction losses (other
# methods record per-block figures of their own, not comparable with these).
RECONSTRUCTIONS = {"flexround", "lrq", "rtn-learned-step"}


def recon(rs, field):
    return cell([r.get(field) for r in rs], 3) if rs[0]["method"] in RECONSTRUCTIONS else "-"


# Sections written by hand or by other benches (bench/llama_cpp_compare.py), kept
# from the first of them to the end when the tables above are regenerated.
KEPT_SECTIONS = ("## Conclusions", "## llama.cpp comparison")


def run_time(rs):
    """When the row's runs started, from their run ids (YYYYMMDD-HHMMSS-xxxx): the first
    and, with several, the last, so a reader can tell which engine measured the seconds
    and peak RSS."""
    stamps = sorted(r["run_id"][:13] for r in rs if r.get("run_id"))
    if not stamps:
        return "-"
    show = lambda s: f"{s[4:6]}-{s[6:8]} {s[9:11]}:{s[11:13]}"
    return show(stamps[0]) + ("" if len(stamps) == 1 else " to " + show(stamps[-1]))


def write_markdown(args, settings, rows):
    conclusions = ""
    if os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as f:
            text = f.read()
        kept = [i for i in (text.find("\n" + h) for h in KEPT_SECTIONS) if i >= 0]
        if kept:
            conclusions = text[min(kept) + 1:]
    windows = (f"first {settings['eval_windows']} windows" if settings["eval_windows"]
               else "all windows")
    lines = [
        "# Results",
        "",
        f"Produced by `bench/results.py` (last run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} "
        f"UTC, {platform.machine()}, {os.cpu_count()} cores); evaluation windows of "
        f"{settings['eval_seq_len']} tokens, {windows} of each text.",
        "",
        "Model: SmolLM2-135M-Instruct. **Its full-precision reference is dequantized from "
        "Q4_1** (the only published form we can fetch), so \"full precision\" means those "
        "dequantized weights.",
        "",
        "- **in** = the held-out paragraphs of the calibration document (the Jargon File, "
        "every 20th paragraph); **ood** = out of domain: every 6th paragraph of the Debian "
        "Policy Manual, which nothing calibrates on.",
        "- **KL** is KL(P_reference ‖ P_quantized) per predicted token in nats: the headline "
        "figure, since it measures fidelity to the model and cannot be improved by fitting "
        "the text. **top-1** is the share of positions where both models' argmax agree.",
        "- **bits/w**: storage of the quantized linears per weight (codes, 16-bit steps, zero "
        "points, kept low-rank factors at their stored precision).",
        "- **recon train** and **recon held-out**: each block's reconstruction loss at the "
        "end of its training divided by the loss it started from (round-to-nearest with the "
        "method's initial grid), averaged over the blocks; on the training samples and on "
        "calibration samples never trained on (block-wise methods only). Below 1 is a gain; "
        "a held-out figure well above the training one is overfitting. Ratios, because the "
        "losses themselves range from about 40 in block 0 to 7,000-100,000 from block 11 on "
        "(this model's later blocks carry a few very large activations), and a mean of the "
        "losses would be those blocks alone.",
        "- Seconds are the whole `lrq quantize` run (load, calibration, method, both "
        "evaluations) without spectra; peak RSS is the process's. W8A8 rows use "
        "SmoothQuant (alpha 0.5, all groups). **run** is when the row's runs started "
        "(month-day hour:minute, UTC): seconds and peak RSS are those of the engine of that "
        "day (the Conclusions say which rows predate which memory work).",
        "- **lr** is the learning rate the run used: `preset` is the preset's own; a number "
        "was chosen on calibration data only by `bench/lr_sweep.py` (docs/LR_SWEEP.md: the "
        "rate with the lowest KL on a validation split of the calibration part), from the "
        "sweep of the same preset and scheme, or of another scheme of that preset where that "
        "scheme was not swept.",
        "- With several seeds a cell is mean ± sample standard deviation (n in the seeds "
        "column); a difference smaller than that spread is not a win.",
        "- LRQ rows use the `fixed` rank rule at the default rank min(out, in) / 4 (144 and 48 "
        "here) unless the table's heading names other options (the reference code's hybrid "
        "rule is `--hyper '{\"rank_rule\":\"reference\"}'`; docs/RECONSTRUCTION.md).",
        "",
    ]
    refs = [r for r in rows if r.get("reference_perplexity")]
    if refs:
        lines += [f"Full precision: perplexity {refs[0]['reference_perplexity']:.3f} (in), "
                  f"{(refs[0].get('ood_reference_perplexity') or float('nan')):.3f} (ood).", ""]
    groups = {}
    for r in rows:
        groups.setdefault((r["preset"], r["extra"]), {}).setdefault(
            (r["scheme"], r["method"], r["lr"]), []).append(r)
    scheme_order = {s: i for i, s in enumerate(SCHEMES)}
    method_order = {m: i for i, m in enumerate(METHODS)}
    for (preset, extra), cells in sorted(groups.items()):
        lines += [f"## Preset `{preset}`" + (f", `{extra}`" if extra else ""), "",
                  "| scheme | method | lr | seeds | bits/w | KL in | KL ood | top-1 in | "
                  "top-1 ood | ppl in | ppl ood | recon train | recon held-out | seconds | "
                  "peak RSS MiB | run (UTC) | note |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        for (scheme, method, lr), rs in sorted(
                cells.items(), key=lambda kv: (scheme_order.get(kv[0][0], 99),
                                               method_order.get(kv[0][1], 99), kv[0][2])):
            col = lambda f: [r.get(f) for r in rs]
            name = method + (" + SmoothQuant" if rs[0]["smoothquant"] else "")
            errors = "; ".join(sorted({r["error"] for r in rs if r["error"]}))
            lines.append(
                f"| {scheme} | {name} | {lr} | {len(rs)} | {cell(col('bits_per_weight'), 3)} | "
                f"{cell(col('kl'), 4)} | {cell(col('ood_kl'), 4)} | "
                f"{cell(col('top1'), 1, 100)} | {cell(col('ood_top1'), 1, 100)} | "
                f"{cell(col('perplexity'), 2)} | {cell(col('ood_perplexity'), 2)} | "
                f"{recon(rs, 'recon_train_ratio')} | {recon(rs, 'recon_heldout_ratio')} | "
                f"{cell(col('seconds'), 0)} | "
                f"{cell(col('peak_rss_mib'), 0)} | {run_time(rs)} | {errors} |")
        lines.append("")
    text = "\n".join(lines)
    if conclusions:
        text += "\n" + conclusions
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
