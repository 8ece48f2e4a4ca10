#!/usr/bin/env python3
"""LoRA training tokens/s of sigmatune against PyTorch + PEFT on the CPU (issue 5) or a GPU, each
side in its own process, interleaved over several rounds (the order alternates per round), with
medians.

    bazel build -c opt //bench:train_bench
    /root/venv-golden/bin/python bench/train_vs_peft.py \
        ~/.cache/sigmatune/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        [--sequences 4] [--length 128] [--steps 20] [--threads 2] [--rounds 3] [--lr 1e-4] [--device cpu|cuda]

Same model (fp32; a GGUF is dequantised by each side), same batch shape (sigmatune: one packed
batch of `sequences` x `length` tokens; PyTorch: a [sequences, length] batch, labels = input ids,
shifted inside transformers), same LoRA (r=16, lora_alpha=32, lora_dropout=0, all 7 projections of
every layer; A Kaiming-uniform, B = 0), AdamW (lr 1e-4, betas 0.9/0.999, eps 1e-8, weight decay 0)
with clip_grad_norm 1.0, same thread count. One step = forward + loss + backward + clip + optimizer
step + zero grad; step 0 warms up and is not timed; per run the median of `steps` step times.
Token ids differ between the sides (same shape; ids do not change the work).

--device cuda (a CUDA build of train_bench on a machine with a GPU) runs both sides on GPU 0: the
base model in bf16 (sigmatune: bf16 weights and activations with fp32 accumulation; PyTorch: the
model loaded in torch.bfloat16 on cuda with attn_implementation="sdpa"), the LoRA parameters,
gradients and AdamW state in fp32 (PEFT's autocast_adapter_dtype, its default; sigmatune's f32
adapters on a bf16 model). Every phase is timed up to the device's synchronisation, and each side
adds its GPU peak memory to its result line (sigmatune: the default memory pool's high-water mark;
PyTorch: torch.cuda.max_memory_allocated()). --threads, the idle wait and the repeat of runs that
overlapped other CPU work do not apply (the other processes' CPU-s are still shown). Without a GPU
it prints one line saying so and exits 1:

    bazel build -c opt //bench:train_bench && /root/venv-golden/bin/python bench/train_vs_peft.py \
        ~/.cache/sigmatune/models/SmolLM2-135M-Instruct.Q4_1.gguf --rounds 3 --device cuda

On the CPU (the VM this runs on is shared): before each run the script waits (up to --idle-wait s) for the
machine to be idle, measures the CPU time other processes used during the run (/proc/stat minus the
child's rusage) and repeats a run that overlapped other work (> --max-other of its wall x cores) up
to --retries times; the per-round table shows that "other CPU-s" for every kept run.

Needs torch, transformers, peft and gguf (e.g. /root/venv-golden); never run by CI.
"""
import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LINE = re.compile(r"(\w+) train: ([\d.]+) tok/s, ([\d.]+) s/step, peak RSS (\d+) MiB")
GPU_PEAK = re.compile(r"\w+ train: [^\n]*?, GPU peak (-?\d+) MiB")


def torch_side(args):
    """The PyTorch + PEFT run (in its own process: --side torch). Prints the same lines as train_bench."""
    import peft
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cuda = args.device == "cuda"
    if not cuda:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    path = os.path.expanduser(args.model)
    kwargs = dict(gguf_file=os.path.basename(path)) if path.endswith(".gguf") else {}
    src = os.path.dirname(path) if path.endswith(".gguf") else path
    if cuda:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16, attn_implementation="sdpa", **kwargs)
        model.to("cuda")
    else:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kwargs)
    config = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=TARGETS,
                        task_type="CAUSAL_LM")
    # autocast_adapter_dtype (PEFT's default): fp32 LoRA weights on the bf16 base model.
    model = get_peft_model(model, config, autocast_adapter_dtype=True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def sync():
        if cuda:
            torch.cuda.synchronize()

    sync()
    where = (f"{torch.cuda.get_device_name(0)} bf16 with {str(params[0].dtype).replace('torch.', '')} adapters, "
             f"GPU peak so far {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if cuda
             else f"{torch.get_num_threads()} threads")
    print(f"pytorch setup: {time.perf_counter() - start:.3f} s (not counted; {sum(p.numel() for p in params)} "
          f"trainable parameters, {where}, peak RSS so far {rss:.0f} MiB; torch "
          f"{torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, attention "
          f"{model.config._attn_implementation})", flush=True)

    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, model.config.vocab_size, (args.sequences, args.length), generator=g)
    if cuda:
        ids = ids.to("cuda")
    steps, fwd, bwd, opt, zero = [], [], [], [], []
    first_loss = last_loss = norm = None
    for step in range(args.steps + 1):  # step 0 warms up
        sync()
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        optimizer.step()
        sync()
        t3 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        sync()
        t4 = time.perf_counter()
        last_loss = float(loss.detach())
        if step == 0:
            first_loss = last_loss
            continue
        steps.append(t4 - t0)
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
        opt.append(t3 - t2)
        zero.append(t4 - t3)
    median = statistics.median(steps)
    tokens = args.sequences * args.length
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_peak = f", GPU peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if cuda else ""
    print(f"pytorch train: {tokens / median:.1f} tok/s, {median:.4f} s/step, peak RSS {rss:.0f} MiB{gpu_peak} (median of "
          f"{args.steps} steps, {tokens} tokens/step, min {min(steps):.4f} max {max(steps):.4f} s)")
    print(f"pytorch phases (median s): forward {statistics.median(fwd):.4f} backward {statistics.median(bwd):.4f} "
          f"optimizer {statistics.median(opt):.4f} zero_grad {statistics.median(zero):.4f}")
    print(f"pytorch loss: first {first_loss:.4f} last {last_loss:.4f} (grad norm at the last step {norm:.4f})")


def busy_seconds():
    """CPU-seconds all processes have used since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - fields[3] - fields[4]) / hz


def wait_idle(limit_s, threshold=0.1, quiet_windows=3):
    """Waits until the machine has been < threshold busy for `quiet_windows` 2 s windows in a row (at
    most limit_s); returns the wait."""
    start = time.monotonic()
    cores = os.cpu_count()
    quiet = 0
    while True:
        before = busy_seconds()
        time.sleep(2.0)
        quiet = quiet + 1 if (busy_seconds() - before) / (2.0 * cores) < threshold else 0
        if quiet >= quiet_windows or time.monotonic() - start > limit_s:
            return time.monotonic() - start


def run_side(name, cmd, env, args):
    """Runs one side until a run overlaps little other work; when the retries are spent, keeps the
    attempt that overlapped the least (marked busy)."""
    cores = os.cpu_count()
    cuda = args.device == "cuda"
    attempts = []
    for attempt in range(args.retries + 1):
        waited = wait_idle(args.idle_wait) if not cuda else 0.0  # the idle wait is for CPU runs
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy = busy_seconds()
        start = time.monotonic()
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        wall = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        mine = (after.ru_utime + after.ru_stime) - (child.ru_utime + child.ru_stime)
        other = max(0.0, busy_seconds() - busy - mine)
        match = LINE.search(out)
        if match is None:
            raise SystemExit(f"{name}: no result line in:\n{out}")
        gpu = GPU_PEAK.search(out)
        result = dict(tok_s=float(match.group(2)), s_step=float(match.group(3)), rss=int(match.group(4)),
                      gpu=int(gpu.group(1)) if gpu else None, other=other, wall=wall, waited=waited, out=out.strip())
        if cuda or other <= args.max_other * wall * cores:
            return result
        print(f"  ({name}: {other:.1f} other CPU-s during a {wall:.0f} s run ({result['tok_s']:.1f} tok/s), "
              f"{'repeating' if attempt < args.retries else 'keeping the quietest attempt'})", flush=True)
        attempts.append(result)
    result = min(attempts, key=lambda a: a["other"] / a["wall"])
    result["busy"] = True
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu: both sides fp32 on --threads threads; cuda: both sides bf16 on GPU 0")
    parser.add_argument("--binary", default="bazel-bin/bench/train_bench")
    parser.add_argument("--idle-wait", type=float, default=180.0, help="max seconds to wait for an idle machine")
    parser.add_argument("--max-other", type=float, default=0.03,
                        help="repeat a run if other processes used more than this fraction of wall x cores")
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--side", choices=["torch"], help=argparse.SUPPRESS)  # internal: the PyTorch process
    args = parser.parse_args()
    if args.side == "torch":
        torch_side(args)
        return

    cuda = args.device == "cuda"
    if cuda:
        import torch
        if not torch.cuda.is_available():
            print(f"train_vs_peft: --device cuda, but torch {torch.__version__} sees no usable GPU "
                  f"(torch.cuda.is_available() is False)", file=sys.stderr)
            sys.exit(1)
        # (No further CUDA calls here: this process stays off the GPU while the sides run.)
        device_desc = "device cuda (GPU 0, bf16 base, fp32 LoRA)"
    else:
        device_desc = f"device cpu, {args.threads} threads"

    model = os.path.expanduser(args.model)
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    ours_cmd = [args.binary, model, str(args.sequences), str(args.length), str(args.steps), str(args.threads),
                repr(args.lr), str(args.rank), repr(args.alpha)]
    torch_cmd = [sys.executable, os.path.abspath(__file__), model, "--side", "torch", "--sequences",
                 str(args.sequences), "--length", str(args.length), "--steps", str(args.steps), "--threads",
                 str(args.threads), "--lr", repr(args.lr), "--rank", str(args.rank), "--alpha", repr(args.alpha)]
    if cuda:
        ours_cmd.append("cuda")
        torch_cmd += ["--device", "cuda"]
    sides = {"sigmatune": ours_cmd, "pytorch": torch_cmd}
    results = {"sigmatune": [], "pytorch": []}
    for r in range(args.rounds):
        order = ["sigmatune", "pytorch"] if r % 2 == 0 else ["pytorch", "sigmatune"]
        for name in order:
            res = run_side(name, sides[name], env, args)
            results[name].append(res)
            print(f"round {r + 1} {name}:", flush=True)
            for line in res["out"].splitlines():
                print(f"  {line}")
            print(f"  (wall {res['wall']:.1f} s, waited {res['waited']:.0f} s for idle, other processes "
                  f"{res['other']:.1f} CPU-s{', BUSY' if res.get('busy') else ''})", flush=True)

    tokens = args.sequences * args.length
    print(f"\n{tokens} tokens/step ({args.sequences} x {args.length}), {args.steps} timed steps per run, "
          f"{device_desc}, LoRA r={args.rank} alpha={args.alpha:g}, AdamW lr={args.lr:g}, clip 1.0")
    print("| round | sigmatune tok/s (s/step) | pytorch+peft tok/s (s/step) | ratio | other CPU-s (ours / torch) |")
    print("|---|---|---|---|---|")
    for r in range(args.rounds):
        o, t = results["sigmatune"][r], results["pytorch"][r]
        print(f"| {r + 1} | {o['tok_s']:.1f} ({o['s_step']:.3f}) | {t['tok_s']:.1f} ({t['s_step']:.3f}) | "
              f"{o['tok_s'] / t['tok_s']:.3f} | {o['other']:.1f} / {t['other']:.1f} |")
    med = {k: statistics.median(x["tok_s"] for x in v) for k, v in results.items()}
    rss = {k: max(x["rss"] for x in v) for k, v in results.items()}
    print(f"| median | {med['sigmatune']:.1f} | {med['pytorch']:.1f} | "
          f"{statistics.median(o['tok_s'] / t['tok_s'] for o, t in zip(results['sigmatune'], results['pytorch'])):.3f}"
          f" (median of rounds) | |")
    gpu = {k: f", GPU peak {max(x['gpu'] for x in v)} MiB" if cuda and all(x["gpu"] is not None for x in v) else ""
           for k, v in results.items()}
    print(f"sigmatune: {med['sigmatune']:.1f} tok/s (median), peak RSS {rss['sigmatune']} MiB{gpu['sigmatune']}")
    print(f"pytorch+peft: {med['pytorch']:.1f} tok/s (median), peak RSS {rss['pytorch']} MiB{gpu['pytorch']}")
    ratio = med["sigmatune"] / med["pytorch"]
    print(f"ratio sigmatune/pytorch tokens/s: {ratio:.3f} (goal >= 1.0: {'met' if ratio >= 1.0 else 'NOT met'})")


if __name__ == "__main__":
    main()
