#!/usr/bin/env python3
"""Learning-rate sweep on calibration data only: per method, scheme and preset, the rate
whose quantized model is closest to the full-precision model on a validation text cut
from the calibration part of the default text (never from either evaluation text).

usage: bench/lr_sweep.py [--lrq build/app/lrq] [--methods flexround,lrq,...]
                         [--schemes W3A16-g128,...] [--preset demo]
                         [--rates METHOD=R1:R2:...,...] [--out docs/LR_SWEEP.md]

The calibration part (`lrq text --part calibration`) is split by paragraphs: the first
90 % calibrates (--calib), the last 10 % validates (--text, KL against the full-precision
model over its first 16 windows of 512 tokens). The out-of-domain evaluation is skipped.
The chosen rates go to docs/LR_SWEEP.json (merged with earlier sweeps: a sweep of more
rates for the same preset, scheme and method adds to the rates tried before), where
bench/results.py --lr-from reads them.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results import SMOOTHQUANT  # noqa: E402  (the W8A8 rows run with SmoothQuant: so does their sweep)

# The rates tried at the demo budget: each grid reaches past its best rate on both sides
# (a best rate at the edge of a grid was followed until it was not).
RATES = {
    "flexround": [3e-3, 1e-2, 2e-2],
    "lrq": [3e-3, 1e-2, 2e-2, 4e-2],
    "rtn-learned-step": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
    "lrqat": [3e-4, 1e-3, 3e-3, 1e-2],
}


def split_calibration(lrq, folder):
    text = subprocess.run([lrq, "text", "--part", "calibration"], capture_output=True,
                          text=True, check=True).stdout
    paragraphs = text.split("\n\n")
    cut = int(len(paragraphs) * 0.9)
    calib, valid = os.path.join(folder, "calib.txt"), os.path.join(folder, "valid.txt")
    with open(calib, "w", encoding="utf-8") as f:
        f.write("\n\n".join(paragraphs[:cut]))
    with open(valid, "w", encoding="utf-8") as f:
        f.write("\n\n".join(paragraphs[cut:]))
    return calib, valid


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lrq", default="build/app/lrq")
    ap.add_argument("--methods", default=",".join(RATES))
    ap.add_argument("--schemes", default="W3A16-g128")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--rates", default="", help="override, e.g. lrq=1e-2:2e-2")
    ap.add_argument("--threads", type=int, default=0,
                    help="intra-op threads per run (0: all cores); 1 lets two sweeps share "
                         "2 cores")
    ap.add_argument("--store", default=os.path.join(tempfile.gettempdir(), "lr_sweep.sqlite"))
    ap.add_argument("--out", default="docs/LR_SWEEP.md")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the table from the .json beside it, running nothing")
    args = ap.parse_args()
    sidecar = os.path.splitext(args.out)[0] + ".json"
    if args.report_only:
        with open(sidecar, encoding="utf-8") as f:
            write_report(args.out, json.load(f))
        return
    rates = dict(RATES)
    for kv in filter(None, args.rates.split(",")):
        method, values = kv.split("=")
        rates[method] = [float(v) for v in values.split(":")]

    folder = tempfile.mkdtemp(prefix="lr-sweep-")
    calib, valid = split_calibration(args.lrq, folder)
    ours = {}
    for scheme in args.schemes.split(","):
        for method in args.methods.split(","):
            tried = []
            for lr in rates[method]:
                threads = ["--threads", str(args.threads)] if args.threads else []
                cmd = [args.lrq] + threads + [
                       "quantize", "default", "--method", method, "--scheme", scheme,
                       "--preset", args.preset, "--lr", repr(lr), "--calib", calib, "--text",
                       valid, "--eval-windows", "16", "--no-ood-eval", "--no-spectra", "--json",
                       "--quiet", "--store", args.store]
                if scheme in SMOOTHQUANT:
                    cmd.append("--smoothquant")
                start = time.time()
                p = subprocess.run(cmd, capture_output=True, text=True)
                kl = None
                for line in p.stdout.splitlines():
                    try:
                        event = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if event.get("event") == "finished":
                        kl = event.get("metrics", {}).get("kl")
                err = "" if p.returncode == 0 else (p.stderr.strip().splitlines() or ["?"])[-1]
                tried.append({"lr": lr, "validation_kl": kl, "seconds": time.time() - start,
                              "error": err})
                print(f"{args.preset} {scheme} {method} lr {lr:g}: validation KL {kl} {err}",
                      file=sys.stderr)
            ours[f"{args.preset}/{scheme}/{method}"] = tried
    # Read the sidecar again now, not at the start: a sweep of another method that ran
    # beside this one may have written it meanwhile, and its figures must stay.
    results = {}
    if os.path.exists(sidecar):
        with open(sidecar, encoding="utf-8") as f:
            results = json.load(f)
    for key, tried in ours.items():
        # Rates tried by an earlier sweep of the same preset, scheme and method count too
        # (a rate tried again replaces its earlier figure).
        again = {t["lr"] for t in tried}
        tried = sorted([t for t in results.get(key, {}).get("tried", [])
                        if t["lr"] not in again] + tried, key=lambda t: t["lr"])
        ok = [t for t in tried if t["validation_kl"] is not None]
        best = min(ok, key=lambda t: t["validation_kl"])["lr"] if ok else None
        results[key] = {"best": best, "tried": tried}
    # Written beside it under this process's own name, then renamed over it: a reader
    # (or a sweep beside this one) never sees half a file.
    partial = f"{sidecar}.{os.getpid()}.tmp"
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    os.replace(partial, sidecar)

    write_report(args.out, results)


def write_report(out, results):
    lines = ["# Learning-rate sweep", "",
             "Generated by `bench/lr_sweep.py`. Chosen on calibration data only: the first 90 % "
             "of the calibration part's paragraphs calibrate, the last 10 % validate (KL "
             "against the full-precision model, 16 windows of 512 tokens). Neither evaluation "
             "text is used. Every run: `lrq quantize default --preset PRESET --scheme SCHEME "
             "--method METHOD --lr RATE` with that calibration text, seed 0 (at W8A8 with "
             "`--smoothquant`, as the W8A8 result rows).", "",
             "Reproduce: `bench/lr_sweep.py --preset demo --schemes W3A16-g128` (about 3 "
             "minutes a run on 2 cores; its default rates are the ones below). The extended "
             "rows: `bench/lr_sweep.py --preset extended --methods flexround,lrq --rates "
             "flexround=3e-3:1e-2:2e-2,lrq=1e-3:3e-3:1e-2:2e-2 --threads 1`, run as two sweeps side by "
             "side (about 30–35 minutes a run at one thread each).", "",
             "| preset | scheme | method | rate: validation KL | chosen |",
             "|---|---|---|---|---:|"]
    for key in sorted(results):
        preset, scheme, method = key.split("/")
        r = results[key]
        tried = ", ".join(f"{t['lr']:g}: " + (f"{t['validation_kl']:.4f}"
                                              if t["validation_kl"] is not None else "failed")
                          for t in r["tried"])
        rates = [t["lr"] for t in r["tried"]]
        # A best rate at the edge of the rates tried may not be the best rate at all.
        edge = ("" if r["best"] is None or len(rates) < 2 else
                " (highest tried)" if r["best"] == max(rates) else
                " (lowest tried)" if r["best"] == min(rates) else "")
        lines.append(f"| {preset} | {scheme} | {method} | {tried} | "
                     f"{'-' if r['best'] is None else format(r['best'], 'g')}{edge} |")
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
