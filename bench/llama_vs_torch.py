#!/usr/bin/env python3
"""Forward+backward tokens/s of sigmatune's LLaMA engine against PyTorch (transformers), side by
side in one run, on the same model and batch shape (frozen weights, gradient flowing to the input
embeddings, as the adapters' training needs).

    bazel build -c opt //bench:llama_bench
    python bench/llama_vs_torch.py ~/.cache/sigmatune/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        [--sequences 4] [--length 128] [--steps 5] [--threads 2] [--device cpu|cuda]

--device cpu (the default): both sides in fp32 on the CPU with --threads threads.
--device cuda (a CUDA build of llama_bench on a machine with a GPU): both sides on GPU 0 in bf16
(sigmatune: bf16 weights and activations with fp32 accumulation; transformers: the model loaded in
torch.bfloat16 on cuda with attn_implementation="sdpa"); every step is timed up to the device's
synchronisation (ModelBackend::Synchronize / torch.cuda.synchronize) and each side reports its GPU
peak memory (sigmatune: the default memory pool's high-water mark; torch: max_memory_allocated).
--threads does not apply. Without a GPU it prints one line saying so and exits 1:

    bazel build -c opt //bench:llama_bench && /root/venv-golden/bin/python bench/llama_vs_torch.py \
        ~/.cache/sigmatune/models/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda

Needs torch, transformers and gguf (e.g. the golden-fixture virtual environment); never run by CI.
Token ids differ between the two sides (same shape; ids do not change the work).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def torch_side(path, sequences, length, steps, device="cpu"):
    cuda = device == "cuda"
    kwargs = dict(dtype=torch.bfloat16, attn_implementation="sdpa") if cuda else dict(dtype=torch.float32)
    if path.endswith(".gguf"):
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), **kwargs)
    else:  # a Hugging Face directory (e.g. tools/gpu/make_shaped_model.py's)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if cuda:
        model.to("cuda")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, model.config.vocab_size, (sequences, length), generator=g)
    if cuda:
        ids = ids.to("cuda")
    times = []
    loss = None
    for step in range(steps + 1):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        out = model(inputs_embeds=embeds, labels=ids)
        out.loss.backward()
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if step > 0:
            times.append(elapsed)
        loss = float(out.loss.detach())
    peak_mib = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return statistics.median(times), loss, model.config._attn_implementation, peak_mib


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--binary", default="bazel-bin/bench/llama_bench")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print(f"llama_vs_torch: --device cuda, but torch {torch.__version__} sees no usable GPU "
              f"(torch.cuda.is_available() is False)", file=sys.stderr)
        sys.exit(1)
    tokens = args.sequences * args.length
    if cuda:
        # (No CUDA call here beyond the check: torch stays off the GPU while llama_bench runs.)
        print(f"device cuda (GPU 0, bf16): {args.sequences} x {args.length} tokens, {args.steps} timed steps",
              flush=True)
    else:
        print(f"device cpu ({args.threads} threads, fp32): {args.sequences} x {args.length} tokens, "
              f"{args.steps} timed steps", flush=True)
        torch.set_num_threads(args.threads)

    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads))
    cmd = [args.binary, args.model, str(args.sequences), str(args.length), str(args.steps)]
    if cuda:
        cmd.append("cuda")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"llama_vs_torch: {' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    ours = proc.stdout.strip()
    print(ours, flush=True)
    ours_s = float(ours.split(" tokens in ")[1].split(" s per step")[0])

    torch_s, torch_loss, attn, peak_mib = torch_side(args.model, args.sequences, args.length, args.steps,
                                                     args.device)
    where = (f"cuda bf16 on {torch.cuda.get_device_name(0)}, GPU peak {peak_mib:.0f} MiB" if cuda
             else f"{args.threads} threads")
    print(f"pytorch fwd+bwd: {tokens} tokens in {torch_s:.3f} s per step = {tokens / torch_s:.1f} tokens/s "
          f"(median of {args.steps} steps, loss {torch_loss:.4f}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, attention {attn}, {where})")
    print(f"ratio sigmatune/pytorch tokens/s: {torch_s / ours_s:.3f}")


if __name__ == "__main__":
    main()
