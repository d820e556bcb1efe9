#!/usr/bin/env python3
"""Smoke matrix: every method x every scheme preset, end to end from the command line.

For each (method, scheme): `lrq quantize default` with tiny settings and an HF
export (--out), then `lrq eval` on that export over the same held-out window.
Prints a table of ok/failed, the quantize run's perplexity, the export's
perplexity and the seconds each took. Exits non-zero if any cell failed.

  bench/matrix.py [--lrq build/app/lrq] [--methods rtn,lrq] [--schemes W4A16,W8A8]

Schemes with activation quantizers (A8, KV8) cannot be expressed in an HF export
(weights only): their export's perplexity is expected to differ, and `lrq eval`
reports the missing quantizers under "not_exported".
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd):
    start = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return p, time.time() - start


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    return {}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lrq", default=os.path.join(HERE, "..", "build", "app", "lrq"))
    ap.add_argument("--methods", default="", help="comma-separated; default: all")
    ap.add_argument("--schemes", default="", help="comma-separated; default: all presets")
    ap.add_argument("--nsamples", default="2")
    ap.add_argument("--seq-len", default="32")
    ap.add_argument("--iters", type=int, default=3, help="iters / steps of learning methods")
    ap.add_argument("--eval-seq-len", default="128")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--no-spectra", action="store_true",
                    help="skip the per-layer spectra (for builds that record them)")
    ap.add_argument("--keep", action="store_true", help="keep the exports and the run store")
    args = ap.parse_args()

    listing, _ = run([args.lrq, "methods", "--json"])
    if listing.returncode != 0:
        sys.exit("lrq methods failed: " + listing.stderr)
    catalogue = json.loads(listing.stdout)
    defaults = {m["name"]: m["defaults"] for m in catalogue["methods"]}
    methods = args.methods.split(",") if args.methods else list(defaults)
    schemes = args.schemes.split(",") if args.schemes else catalogue["schemes"]

    work = tempfile.mkdtemp(prefix="lrq-matrix-")
    store = os.path.join(work, "runs.sqlite")
    rows = []
    header = "%-17s %-11s %-7s %12s %12s %10s %7s %7s  %s" % (
        "method", "scheme", "result", "ppl (run)", "ppl (eval)", "rel diff", "q s", "eval s",
        "note")
    print(header, flush=True)
    # Diagonal order: the first max(len) cells already cover every method and every
    # scheme, so a run stopped early still says something about each.
    cells = [(methods[i], schemes[(i + d) % len(schemes)])
             for d in range(len(schemes)) for i in range(len(methods))]
    cells = list(dict.fromkeys(cells))
    for method, scheme in cells:
        tag = "%s-%s" % (method, scheme)
        out = os.path.join(work, tag)
        hyper = {}
        if "iters" in defaults[method]:
            hyper["iters"] = args.iters
        if "steps" in defaults[method]:
            hyper["steps"] = args.iters
        q_cmd = [args.lrq, "quantize", "default", "--method", method, "--scheme", scheme,
                 "--nsamples", args.nsamples, "--seq-len", args.seq_len,
                 "--eval-seq-len", args.eval_seq_len, "--eval-windows", "1",
                 "--hyper", json.dumps(hyper), "--out", out, "--store", store,
                 "--work-dir", os.path.join(work, "work-" + tag),
                 "--threads", args.threads, "--json", "--quiet"]
        if args.no_spectra:
            q_cmd.append("--no-spectra")
        q, q_s = run(q_cmd)
        row = {"method": method, "scheme": scheme, "quantize_seconds": q_s}
        if q.returncode != 0:
            row.update(result="failed", note="quantize exit %d: %s" % (
                    q.returncode, q.stderr.strip()[-300:]))
        else:
            done = last_json(q.stdout)
            row["run_ppl"] = done.get("metrics", {}).get("perplexity")
            e, e_s = run([args.lrq, "eval", out, "--seq-len", args.eval_seq_len,
                          "--max-windows", "1", "--threads", args.threads, "--json",
                          "--quiet"])
            row["eval_seconds"] = e_s
            if e.returncode != 0:
                row.update(result="failed", note="eval exit %d: %s" % (
                        e.returncode, e.stderr.strip()[-300:]))
            else:
                ev = last_json(e.stdout)
                row["eval_ppl"] = ev.get("perplexity")
                missing = ev.get("not_exported", [])
                row["result"] = "ok"
                row["note"] = ("%d activation quantizers not in the export" % len(missing)
                               if missing else "")
        rows.append(row)
        rel = ""
        if row.get("run_ppl") and row.get("eval_ppl"):
            rel = "%.2e" % (abs(row["eval_ppl"] - row["run_ppl"]) / row["run_ppl"])
        fmt = lambda v: "%.4f" % v if isinstance(v, (int, float)) else "-"
        print("%-17s %-11s %-7s %12s %12s %10s %7.1f %7s  %s" % (
            method, scheme, row["result"], fmt(row.get("run_ppl")), fmt(row.get("eval_ppl")),
            rel, q_s, ("%.1f" % row["eval_seconds"]) if "eval_seconds" in row else "-",
            row.get("note", "")), flush=True)
    with open(os.path.join(work, "matrix.json"), "w") as f:
        json.dump(rows, f, indent=1)
    failed = [r for r in rows if r["result"] != "ok"]
    print("\n%d of %d cells ok; details in %s" % (len(rows) - len(failed), len(rows),
                                                    os.path.join(work, "matrix.json")))
    if not args.keep:
        for r in rows:
            subprocess.run(["rm", "-rf", os.path.join(work, "%s-%s" % (r["method"], r["scheme"]))])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
