#!/usr/bin/env python3
"""CorDA adapter build, sigmatune against HF PEFT on the CPU or a GPU, side by side in one run: the
same model, the same calibration samples (real English text: the license texts Debian ships in
/usr/share/common-licenses, tokenized by the model's tokenizer, cut into windows), the same rank
and mode, every linear of every layer targeted.

    bazel build -c opt //bench:corda_bench
    python bench/corda_vs_peft.py ~/.cache/sigmatune/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        [--samples 32] [--length 256] [--rank 16] [--mode ipm] [--threads 2] [--device cpu|cuda] \
        [--batch-tokens 2048]

GPU (a CUDA build of corda_bench, one visible GPU; the CUDA wheel of torch):

    bazel build -c opt //bench:corda_bench
    /root/venv-golden/bin/python bench/corda_vs_peft.py \
        ~/.cache/sigmatune/models/SmolLM2-135M-Instruct.Q4_1.gguf --samples 32 --length 512 --rank 16 \
        --device cuda

--device cpu (default): both sides fp32 on the CPU, as before. --device cuda: both sides in bf16 on
GPU 0. sigmatune: corda_bench's cuda device (bf16 weights/activations, f32 covariances, f32
decomposition of the bf16 weight, f32 adapters). PEFT: the model loaded in bfloat16 and moved to
cuda, preprocess_corda there (its hooks cast each input to float32, so the covariances are f32 on
the GPU; collect_eigens takes weight.float(), damps, inverts and SVDs on the GPU and parks U/V on
the CPU until crop_corda_eigens moves the kept columns back; corda_init builds f32 lora_A/lora_B
and writes W_res back in bf16). Times are taken after torch.cuda.synchronize(); PEFT's peak GPU
memory is torch.cuda.max_memory_allocated() (the statistics are reset after the model is loaded,
so it counts the resident model plus the CorDA build), sigmatune's the high watermark of the
device's memory pool (weights included). --device cuda without a usable GPU in torch: a one-line
error, exit 1; corda_bench does the same for its own check.

PEFT side: preprocess_corda (hooks + a batch-size-1 loop, as PEFT's examples) + get_peft_model +
save_pretrained of the adapter. sigmatune side: //bench:corda_bench (covariances + damping +
decomposition + adapter write). Both report wall time and peak RSS (and peak GPU memory on cuda);
the script then compares the adapters module by module (relative Frobenius error of s*B*A, in
float64 on the CPU) and prints the time ratio (last line).
Needs torch, transformers, peft, gguf, safetensors (e.g. the golden-fixture virtual environment);
never run by CI.
"""
import argparse
import glob
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.config import CordaConfig
from peft.tuners.lora.corda import preprocess_corda
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def corda_f64(w, c, rank, mode, scale):
    """PEFT's decomposition (collect_eigens, crop, corda_init) in float64, with the damping d PEFT's
    fp32 rule picks: s * B @ A."""
    c32 = c.float()
    eye32 = torch.eye(c.shape[0])
    damp = 0.01
    while True:
        c_d32 = c32 + eye32 * torch.mean(torch.diag(c32)) * damp
        if torch.dist(c_d32 @ torch.linalg.inv(c_d32), eye32).item() < 0.05:
            break
        damp *= 2
    w, c = w.double(), c.double()
    c_d = c + torch.eye(c.shape[0], dtype=torch.float64) * c.diag().mean() * damp
    inv = torch.linalg.inv(c_d)
    u, s, vh = torch.linalg.svd(w @ c_d, full_matrices=False)
    v = (vh @ inv).T
    sel = slice(0, rank) if mode == "ipm" else slice(-rank, None)
    root = (s[sel] / scale).sqrt()
    return scale * (u[:, sel] @ torch.diag(root)) @ (torch.diag(root) @ v[:, sel].T)


def calibration_samples(tokenizer, samples, length):
    text = "\n\n".join(open(p, encoding="utf-8", errors="replace").read()
                       for p in sorted(glob.glob("/usr/share/common-licenses/*")) if os.path.isfile(p))
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    need = samples * length
    if ids.numel() < need:
        raise SystemExit(f"only {ids.numel()} tokens of text for {need} calibration tokens")
    return [ids[i * length:(i + 1) * length].clone() for i in range(samples)]


def peft_side(model, samples, rank, mode, out_dir, device):
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights="corda",
                        corda_config=CordaConfig(corda_method=mode, prune_temporary_fields=False))

    def run_model():
        for ids in samples:
            model(input_ids=ids[None, :])

    def now():
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    start = now()
    preprocess_corda(model, config, run_model=run_model)
    calibrated = now()
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out_dir)
    total = now() - start
    return peft_model, calibrated - start, total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--mode", choices=["ipm", "kpm"], default="ipm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-tokens", type=int, default=2048,
                        help="corda_bench packs the samples into batches of at most this many tokens")
    parser.add_argument("--binary", default="bazel-bin/bench/corda_bench")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"corda_vs_peft: --device cuda, but torch.cuda.is_available() is false (torch "
                 f"{torch.__version__}, CUDA {torch.version.cuda}); use --device cpu")
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        gpu = torch.cuda.get_device_name(0)
        print(f"corda_vs_peft: device cuda (GPU 0: {gpu}; bf16 weights and activations, f32 covariances "
              f"and adapters on both sides)")
    else:
        print("corda_vs_peft: device cpu (fp32 on both sides)")

    path = os.path.expanduser(args.model)
    kwargs = dict(gguf_file=os.path.basename(path)) if path.endswith(".gguf") else {}
    src = os.path.dirname(path) if path.endswith(".gguf") else path
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, **kwargs)
    except (OSError, ValueError) as e:  # a weights-only directory (tools/gpu/make_shaped_model.py)
        tokenizer = None
        print(f"corda_vs_peft: no tokenizer in {src} ({type(e).__name__}); calibrating on seeded random token ids")
    if tokenizer is not None:
        samples = calibration_samples(tokenizer, args.samples, args.length)
    else:
        vocab = AutoConfig.from_pretrained(src, **kwargs).vocab_size
        g = torch.Generator().manual_seed(1234)
        samples = [torch.randint(0, vocab, (args.length,), generator=g) for _ in range(args.samples)]

    with tempfile.TemporaryDirectory() as tmp:
        calib = os.path.join(tmp, "calib.safetensors")
        save_file({"calib_ids": torch.cat(samples).to(torch.int32),
                   "calib_cu_seqlens": torch.arange(0, args.samples + 1, dtype=torch.int32) * args.length}, calib)
        ours_dir = os.path.join(tmp, "ours")
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads))
        run = subprocess.run([args.binary, path, calib, str(args.rank), args.mode, ours_dir,
                              str(args.batch_tokens), args.device], env=env, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"corda_vs_peft: {args.binary} exited with {run.returncode}: {run.stderr.strip()}")
        ours = run.stdout.strip()
        print(ours)
        summary = next(line for line in ours.splitlines() if line.startswith("sigmatune corda:"))
        ours_s = float(summary.split("total ")[1].split(" s")[0])
        ours_gpu = float(summary.split("peak GPU ")[1].split(" MiB")[0]) if "peak GPU " in summary else None

        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kwargs).eval().to(args.device)
        # The base weights before CorDA rewrites them (W_res), kept on the CPU for the float64 check.
        original = {n: m.weight.detach().to("cpu", copy=True) for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in TARGETS}
        samples = [ids.to(args.device) for ids in samples]
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if args.device == "cuda":
            torch.cuda.synchronize()
            gpu_before = torch.cuda.memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            peft_model, calib_s, peft_s = peft_side(model, samples, args.rank, args.mode, os.path.join(tmp, "peft"),
                                                    args.device)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        gpu_note = ""
        if args.device == "cuda":
            peft_gpu = torch.cuda.max_memory_allocated() / 2**20
            gpu_note = f", peak GPU {peft_gpu:.0f} MiB ({gpu_before:.0f} MiB after loading the model)"
        print(f"peft corda: calibrate {calib_s:.3f} s, total {peft_s:.3f} s, peak RSS {rss:.0f} MiB{gpu_note} "
              f"({rss_before:.0f} MiB after loading the model; torch {torch.__version__}, transformers "
              f"{transformers.__version__}, peft {peft.__version__}, {args.threads} threads, "
              f"{args.samples} x {args.length} tokens, r={args.rank}, {args.mode}, {args.device})")

        # Accuracy: both adapters against the exact answer (PEFT's algorithm replayed in float64 on
        # PEFT's covariance), for every module where the two disagree by more than 1e-3 and every
        # 7th other one (a float64 replay of all of them takes minutes). Everything is moved to the
        # CPU in float64 first. On cuda the exact answer is taken on the bf16 weights both sides
        # decompose, but on PEFT's covariance: sigmatune's own (from its bf16 forward pass) differs
        # from it by the two engines' bf16 rounding, which its error here therefore includes.
        ours_w = load_file(os.path.join(ours_dir, "adapter_model.safetensors"))
        rows = []
        for i, (name, module) in enumerate(peft_model.named_modules()):
            if not (hasattr(module, "lora_A") and "default" in module.lora_A):
                continue
            key = name.replace("base_model.model.", "", 1)
            scale = module.scaling["default"]
            product = module.lora_B["default"].weight @ module.lora_A["default"].weight
            theirs = (scale * product).detach().cpu().double()
            a = ours_w[f"base_model.model.{key}.lora_A.weight"].double()
            b = ours_w[f"base_model.model.{key}.lora_B.weight"].double()
            mine = scale * (b @ a)
            apart = float((mine - theirs).norm() / theirs.norm())
            if apart > 1e-3 or len(rows) % 7 == 0:
                exact = corda_f64(original[key], module.base_layer.covariance_matrix.cpu(), args.rank, args.mode,
                                  scale)
                rows.append((key, apart, float((mine - exact).norm() / exact.norm()),
                             float((theirs - exact).norm() / exact.norm())))
        print(f"adapter accuracy vs the exact (float64) answer over {len(rows)} checked modules:")
        print(f"  sigmatune: median {statistics.median(r[2] for r in rows):.2e}, max {max(r[2] for r in rows):.2e}")
        print(f"  peft:      median {statistics.median(r[3] for r in rows):.2e}, max {max(r[3] for r in rows):.2e}")
        for key, apart, mine_err, theirs_err in sorted(rows, key=lambda r: -r[1])[:3]:
            print(f"  most apart: {key}: sigmatune vs peft {apart:.2e}; vs exact: sigmatune {mine_err:.2e}, "
                  f"peft {theirs_err:.2e}")
        if ours_gpu is not None:
            print(f"ratio sigmatune/peft peak GPU memory: {ours_gpu / peft_gpu:.3f}")
        print(f"ratio sigmatune/peft wall time: {ours_s / peft_s:.3f}")


if __name__ == "__main__":
    main()
