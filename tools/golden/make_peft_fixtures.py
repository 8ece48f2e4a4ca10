#!/usr/bin/env python3
"""Golden fixtures for the PEFT methods (kernels/peft): what HF PEFT computes for the tiny LLaMA
checkpoints of tests/testdata/llama on a fixed calibration batch.

Run by hand, from the repository root, in a virtual environment with torch, transformers, peft and
safetensors (tests/testdata/README.md lists the versions used):
    python tools/golden/make_peft_fixtures.py

For each tiny model it writes tests/testdata/peft/<name>.safetensors holding
  calib_ids [T] i32, calib_cu_seqlens [S+1] i32   the calibration samples, packed (PEFT runs them one
                                                  by one, batch size 1, as its CorDA examples do)
and for every targeted module <m> (HF name, e.g. model.layers.0.self_attn.q_proj):
  <m>.covariance         PEFT's CorDA covariance (sum over samples of (X/|max X|)^T (X/|max X|), / S)
  <m>.<method>.residual  the base weight PEFT leaves in the layer after init (W_res)
  <m>.<method>.delta     scaling * lora_B @ lora_A at init (not for KaSA, whose B is 0)
for method in pissa, corda_ipm, corda_kpm, kasa (residual only: KaSA's A and d are random), and
  <m>.corda_<mode>.delta_f64   PEFT's CorDA algorithm (damping, inverse, SVD, V = Vh C_d^-1) replayed
                               in float64 from PEFT's own covariance: the exact answer PEFT's fp32
                               computation approximates (its own error is up to a few 1e-4 here,
                               from inverting C_d in fp32).
Metadata: r, lora_alpha, the versions used.
"""
import os
import platform
import tempfile

import peft
import safetensors
import torch
import transformers
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.config import CordaConfig, KasaConfig
from peft.tuners.lora.corda import preprocess_corda
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
MODELS = ("tiny_gqa_tied", "tiny_mha_llama3")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8.0
LENGTHS = (40, 33, 29, 25)  # 127 tokens: more than every layer's input width


def load(name):
    return LlamaForCausalLM.from_pretrained(os.path.join(ROOT, "tests", "testdata", "llama", name),
                                            torch_dtype=torch.float32, attn_implementation="eager").eval()


def linear_modules(model):
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in TARGETS]


def init_results(peft_model, method, out):
    for name, module in peft_model.named_modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        key = name.replace("base_model.model.", "", 1)
        out[f"{key}.{method}.residual"] = module.base_layer.weight.detach().float().contiguous().clone()
        if method != "kasa":
            delta = module.scaling["default"] * (module.lora_B["default"].weight @ module.lora_A["default"].weight)
            out[f"{key}.{method}.delta"] = delta.detach().float().contiguous()


def corda_f64(w, c, rank, mode, scale):
    """PEFT's collect_eigens + crop + corda_init, in float64."""
    w, c = w.double(), c.double()
    eye = torch.eye(c.shape[0], dtype=torch.float64)
    damp = 0.01
    while True:
        c_d = c + eye * c.diag().mean() * damp
        inv = torch.linalg.inv(c_d)
        if torch.dist(c_d @ inv, eye).item() < 0.05:
            break
        damp *= 2
    u, s, vh = torch.linalg.svd(w @ c_d, full_matrices=False)
    v = (vh @ inv).T
    sel = slice(0, rank) if mode == "ipm" else slice(-rank, None)
    root = (s[sel] / scale).sqrt()
    a = torch.diag(root) @ v[:, sel].T
    b = u[:, sel] @ torch.diag(root)
    return scale * b @ a


def make(name, seed):
    base = load(name)
    vocab = base.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    samples = [torch.randint(0, vocab, (n,), generator=g) for n in LENGTHS]
    out = {
        "calib_ids": torch.cat(samples).to(torch.int32),
        "calib_cu_seqlens": torch.tensor([0] + list(torch.tensor(LENGTHS).cumsum(0)), dtype=torch.int32),
    }

    def run_model_for(model):
        def run():
            for ids in samples:
                model(input_ids=ids[None, :])
        return run

    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("ipm", "kpm"):
            model = load(name)
            cov_file = os.path.join(tmp, f"cov_{mode}.pt")
            config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, init_lora_weights="corda",
                                corda_config=CordaConfig(corda_method=mode, covariance_file=cov_file))
            preprocess_corda(model, config, run_model=run_model_for(model))
            covariances = torch.load(cov_file)
            if mode == "ipm":
                for key, cov in covariances.items():
                    out[f"{key}.covariance"] = cov.float().contiguous()
            weights = {n: m.weight.detach().clone() for n, m in linear_modules(model)}
            init_results(get_peft_model(model, config), f"corda_{mode}", out)
            for key, w in weights.items():
                out[f"{key}.corda_{mode}.delta_f64"] = corda_f64(w, covariances[key], RANK, mode,
                                                                 ALPHA / RANK).contiguous()

    model = load(name)
    init_results(get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS,
                                                  init_lora_weights="pissa")), "pissa", out)
    model = load(name)
    init_results(get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS,
                                                  kasa_config=KasaConfig())), "kasa", out)

    meta = {"r": str(RANK), "lora_alpha": str(ALPHA), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version()}
    path = os.path.join(ROOT, "tests", "testdata", "peft", f"{name}.safetensors")
    save_file(out, path, metadata=meta)
    print(f"wrote {path}: {len(out)} tensors")


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    for i, name in enumerate(MODELS):
        make(name, 1234 + i)
