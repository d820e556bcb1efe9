#!/usr/bin/env python3
"""LRQ against FlexRound at equal budgets, the experiment docs/RECONSTRUCTION.md reports.

usage: bench/recon_experiment.py [--lrq build/app/lrq] [--store FILE] [--out FILE.md]
                                 [--long-iters 400] [--skip-long] [--reuse-short FILE.json]
                                 [--extra-long METHOD:LR ...]

Scheme W3A16 on blocks 0-3 of the default model, demo calibration (16 x 128 tokens):
  1. 50 iterations: FlexRound at 3e-3 and 1e-2, LRQ at 3e-3, 1e-2 and 2e-2, and
     rtn-learned-step (learned steps only, no rounding scales) as the ablation;
  2. each method again for --long-iters iterations at its best 50-iteration rate, the
     rate being chosen on calibration data only (the lowest mean held-out
     reconstruction loss, on calibration sequences never trained on);
  3. LRQ at full rank for --long-iters at the same rate: at full rank L2·U2 can
     express any S2, so its training loss should approach FlexRound's.
Per run it prints and writes each block's training and held-out loss (final), the KL
and top-1 against the full-precision model on both evaluation texts, and seconds.
--reuse-short takes the 50-iteration rows from an earlier run's JSON (e.g.
docs/RECON_EXPERIMENT.json) instead of running them again.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SCHEME = {"name": "W3A16 blocks 0-3",
          "weight": {"bits": 3, "granularity": "per-channel", "symmetric": False},
          "layers": {"blocks": [0, 1, 2, 3]}}


def show(args, run_id):
    p = subprocess.run([args.lrq, "runs", "show", run_id, "--store", args.store, "--json"],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def summary(run, method, lr, iters, extra, secs):
    blocks = run.get("block_records", [])
    return {"method": method, "lr": lr, "iters": iters, "extra": " ".join(extra),
            "run_id": run["id"], "seconds": secs, "metrics": run.get("metrics", {}),
            "train": [b.get("final_loss") for b in blocks],
            "heldout": [b.get("heldout_final_loss") for b in blocks],
            "heldout_initial": [b.get("heldout_initial_loss") for b in blocks]}


def recorded(args, method, lr, iters, extra):
    """A finished run of this configuration already in the store (an interrupted
    experiment goes on where it stopped), or None."""
    if not os.path.exists(args.store):
        return None
    p = subprocess.run([args.lrq, "runs", "list", "--store", args.store, "--json"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return None
    rank = int(extra[1]) if extra else 0  # 0: the method's default rank, as runs record it
    for listed in json.loads(p.stdout).get("runs", []):
        if listed.get("status") != "finished" or listed.get("method") != method:
            continue
        run = show(args, listed["id"])
        hyper = run.get("hyperparameters", {})
        if (run.get("scheme", {}).get("name") == SCHEME["name"] and hyper.get("lr") == lr
                and hyper.get("iters") == iters and hyper.get("rank", 0) == rank):
            return summary(run, method, lr, iters, extra, run.get("seconds", float("nan")))
    return None


def quantize(args, scheme_path, method, lr, iters, extra=()):
    known = recorded(args, method, lr, iters, extra)
    if known:
        return known
    cmd = [args.lrq, "quantize", "default", "--method", method, "--scheme", scheme_path,
           "--preset", "demo", "--iters", str(iters), "--lr", str(lr), "--json", "--quiet",
           "--no-spectra", "--store", args.store] + list(extra)
    start = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.time() - start
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr.strip()[-400:]}")
    done = {}
    for line in p.stdout.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "finished":
            done = event
    return summary(show(args, done["run_id"]), method, lr, iters, extra, secs)


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def describe(r):
    m = r["metrics"]
    blocks = " ".join(f"{t:.4g}/{h:.4g}" if t is not None and h is not None else "-"
                      for t, h in zip(r["train"], r["heldout"]))
    return (f"| {r['method']}{' ' + r['extra'] if r['extra'] else ''} | {r['lr']:g} | "
            f"{r['iters']} | {blocks} | {mean(r['train']):.4g} | {mean(r['heldout']):.4g} | "
            f"{m.get('kl', float('nan')):.4f} | {m.get('ood_kl', float('nan')):.4f} | "
            f"{100 * m.get('top1', float('nan')):.1f} | {r['seconds']:.0f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lrq", default="build/app/lrq")
    ap.add_argument("--store", default=os.path.join(tempfile.gettempdir(), "recon_experiment.sqlite"))
    ap.add_argument("--out", default="docs/RECON_EXPERIMENT.md")
    ap.add_argument("--long-iters", type=int, default=400)
    ap.add_argument("--skip-long", action="store_true")
    ap.add_argument("--extra-long", metavar="METHOD:LR", action="append", default=[],
                    help="another --long-iters run beside the best rates (repeatable), e.g. lrq:0.01")
    ap.add_argument("--reuse-short", metavar="FILE.json",
                    help="the 50-iteration rows of an earlier run, instead of running them")
    args = ap.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(SCHEME, f)
        scheme_path = f.name

    short = []
    if args.reuse_short:
        with open(args.reuse_short, encoding="utf-8") as f:
            short = json.load(f)["short"]
        for r in short:
            print(describe(r), file=sys.stderr)
    for method, rates in ([] if short else [("flexround", [3e-3, 1e-2]),
                                             ("lrq", [3e-3, 1e-2, 2e-2]),
                                             ("rtn-learned-step", [1e-3])]):
        for lr in rates:
            r = quantize(args, scheme_path, method, lr, 50)
            print(describe(r), file=sys.stderr)
            short.append(r)
    best = {}
    for r in short:
        if r["method"] not in best or mean(r["heldout"]) < mean(best[r["method"]]["heldout"]):
            best[r["method"]] = r
    long = []
    if not args.skip_long:
        for method in ("flexround", "lrq"):
            r = quantize(args, scheme_path, method, best[method]["lr"], args.long_iters)
            print(describe(r), file=sys.stderr)
            long.append(r)
        r = quantize(args, scheme_path, "lrq", best["lrq"]["lr"], args.long_iters,
                     ("--rank", "1000000"))
        print(describe(r), file=sys.stderr)
        long.append(r)
        for spec in args.extra_long:
            method, lr = spec.split(":")
            r = quantize(args, scheme_path, method, float(lr), args.long_iters)
            print(describe(r), file=sys.stderr)
            long.append(r)

    header = ["| method | lr | iters | per block: train/held-out loss (blocks 0-3) | "
              "train mean | held-out mean | KL in | KL ood | top-1 in % | seconds |",
              "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    lines = ["# LRQ against FlexRound at equal budgets", "",
             "Generated by `bench/recon_experiment.py`: W3A16 per channel, blocks 0-3 of the "
             "default model, demo calibration (16 sequences of 128 tokens), batch 2. "
             "Losses are the block reconstruction loss at the end of training (train: the "
             "training sequences; held-out: calibration sequences never trained on). "
             "Rates for the long runs were chosen by the lowest mean held-out loss at 50 "
             "iterations (calibration data only).", "", "## 50 iterations", ""] + header
    lines += [describe(r) for r in short]
    if long:
        lines += ["", f"## {args.long_iters} iterations at each method's best rate", ""] + header
        lines += [describe(r) for r in long]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.splitext(args.out)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump({"short": short, "long": long}, f, indent=1)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
