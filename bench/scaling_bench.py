#!/usr/bin/env python3
"""Calibration + decomposition (and a few training steps) on 1 vs N ranks of `mpirun`.

The anchor is the same job on one rank, run side by side in this script; the ratio printed is
the speed-up of each phase (1-rank seconds / N-rank seconds) and the scaling efficiency
(speed-up / N). Every rank gets `--threads` BLAS threads, so N ranks use N x threads cores:
on a machine with fewer cores than that the ranks share cores and the efficiency says so.

Usage (from the repository root, after `bazel build -c opt //worker:sigmatune-worker` and
tools/get_smollm2.sh):
  python3 bench/scaling_bench.py --ranks 1 2 [--model PATH] [--method corda_kpm] [--rounds 1]

Only the standard library is needed. Each run writes into a fresh directory under --work
(default /tmp/sigmatune-scaling) with the cache disabled, so calibration really runs.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spec_text(args, out_dir):
    return f"""name: scaling
base_model: {args.model}
method:
  type: {args.method}
  rank: 16
  alpha: 32
  target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
calibration:
  path: {REPO}/examples/data/knowledge-calibration.jsonl
  format: text
  num_samples: {args.calibration_samples}
  max_seq_len: 256
datasets:
  - path: {REPO}/examples/data/arith-train.jsonl
    format: chat
micro_batch_size: 4
gradient_accumulation_steps: 4
max_steps: {args.steps}
sequence_len: 256
sample_packing: true
num_threads: {args.threads}
export_merged: false
output_dir: {out_dir}
cache_dir: none
"""


def run(args, ranks, round_index):
    out_dir = os.path.join(args.work, f"r{ranks}-{round_index}")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    spec = os.path.join(out_dir + ".yaml")
    with open(spec, "w") as f:
        f.write(spec_text(args, out_dir))
    worker = args.worker
    cmd = ["mpirun", "--oversubscribe", "--allow-run-as-root", "--bind-to", "none",
           "--mca", "btl", "self,vader", "--mca", "btl_vader_single_copy_mechanism", "none", "-np", str(ranks),
           "-x", f"OPENBLAS_NUM_THREADS={args.threads}", worker, "--job", spec, "--quiet"]
    start = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    times = report["times"]
    times["wall"] = wall
    return times, report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default=os.path.expanduser(
        "~/.cache/sigmatune/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--method", default="corda_kpm")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads per rank")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--work", default="/tmp/sigmatune-scaling")
    parser.add_argument("--worker", default=os.path.join(REPO, "bazel-bin/worker/sigmatune-worker"),
                        help="the sigmatune-worker binary (build it with -c opt)")
    args = parser.parse_args()
    if 1 not in args.ranks:
        args.ranks = [1] + args.ranks
    os.makedirs(args.work, exist_ok=True)
    phases = ["load", "calibrate", "decompose", "train", "export", "wall"]
    best = {}
    for round_index in range(args.rounds):
        for ranks in args.ranks:  # interleaved rounds: drift hits every configuration alike
            times, _ = run(args, ranks, round_index)
            for p in phases:
                key = (ranks, p)
                best[key] = min(best.get(key, float("inf")), times.get(p, 0.0))
            print(f"round {round_index + 1} ranks {ranks}: " +
                  ", ".join(f"{p} {times.get(p, 0.0):.2f}s" for p in phases), flush=True)
    print(f"\n{args.method} on {os.path.basename(args.model)}, {args.threads} BLAS thread(s) per rank, "
          f"{os.cpu_count()} cores, best of {args.rounds} round(s)")
    print("| phase | " + " | ".join(f"{r} rank(s) s" for r in args.ranks) + " | " +
          " | ".join(f"speed-up x{r} (eff.)" for r in args.ranks if r != 1) + " |")
    print("|---" * (1 + 2 * len(args.ranks) - 1) + "|")
    for p in phases:
        base = best[(1, p)]
        cells = [f"{best[(r, p)]:.2f}" for r in args.ranks]
        ratios = []
        for r in args.ranks:
            if r == 1:
                continue
            t = best[(r, p)]
            speedup = base / t if t > 0 else float("nan")
            ratios.append(f"{speedup:.2f} ({speedup / r:.0%})")
        print(f"| {p} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()
