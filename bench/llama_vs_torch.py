#!/usr/bin/env python3
"""Forward+backward tokens/s of sigmatune's LLaMA engine against PyTorch (transformers) on the CPU,
side by side in one run, on the same model and batch shape (fp32, frozen weights, gradient
flowing to the input embeddings, as the adapters' training needs).

    bazel build -c opt //bench:llama_bench
    python bench/llama_vs_torch.py ~/.cache/sigmatune/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        [--sequences 4] [--length 128] [--steps 5] [--threads 2]

Needs torch, transformers and gguf (e.g. the golden-fixture virtual environment); never run by CI.
Token ids differ between the two sides (same shape; ids do not change the work).
"""
import argparse
import os
import statistics
import subprocess
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def torch_side(path, sequences, length, steps):
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 torch_dtype=torch.float32)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, model.config.vocab_size, (sequences, length), generator=g)
    times = []
    loss = None
    for step in range(steps + 1):
        start = time.perf_counter()
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        out = model(inputs_embeds=embeds, labels=ids)
        out.loss.backward()
        elapsed = time.perf_counter() - start
        if step > 0:
            times.append(elapsed)
        loss = float(out.loss.detach())
    return statistics.median(times), loss, model.config._attn_implementation


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--binary", default="bazel-bin/bench/llama_bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokens = args.sequences * args.length

    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads))
    ours = subprocess.run([args.binary, args.model, str(args.sequences), str(args.length), str(args.steps)],
                          env=env, check=True, capture_output=True, text=True).stdout.strip()
    print(ours)
    ours_s = float(ours.split(" tokens in ")[1].split(" s per step")[0])

    torch_s, torch_loss, attn = torch_side(args.model, args.sequences, args.length, args.steps)
    print(f"pytorch fwd+bwd: {tokens} tokens in {torch_s:.3f} s per step = {tokens / torch_s:.1f} tokens/s "
          f"(median of {args.steps} steps, loss {torch_loss:.4f}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, attention {attn}, {args.threads} threads)")
    print(f"ratio sigmatune/pytorch tokens/s: {torch_s / ours_s:.3f}")


if __name__ == "__main__":
    main()
