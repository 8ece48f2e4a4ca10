#!/usr/bin/env python3
"""Golden fixture of the optimizer step (kernels/ops/adamw, worker/train/optimizer and schedule):
torch.optim.AdamW with torch.nn.utils.clip_grad_norm_ before each step and the learning rate of
transformers' get_cosine_schedule_with_warmup, driven the way transformers' Trainer drives them
(clip, optimizer.step(), lr_scheduler.step()), and the factors of the three schedules.

Run by hand, from the repository root, in a virtual environment that has torch, transformers and
safetensors (e.g. /root/venv-golden):
    python tools/golden/make_optim_fixtures.py
It rewrites tests/testdata/optim/adamw.safetensors; its __metadata__ records the versions used and
tests/testdata/README.md lists them. CI never runs this (the fixture is committed).

Tensors (f32 unless noted; [1]-shaped f64 tensors hold scalars):
  hparams (f64): [lr, beta1, beta2, eps, weight_decay, max_grad_norm, warmup_steps, total_steps]
  init.<p>: the parameters before the first step, for p in PARAMS
  step<k>.grad.<p>: the gradient given to step k (k = 1..5, before clipping)
  step<k>.lr (f64): the learning rate the optimizer used at step k (base lr * schedule factor)
  step<k>.grad_norm (f64): clip_grad_norm_'s total norm (computed by torch in f32)
  step<k>.clip_coef (f32 [1]): the coefficient the gradients were multiplied by, min(1, max / (norm + 1e-6))
  step<k>.param.<p>, step<k>.exp_avg.<p>, step<k>.exp_avg_sq.<p>: the state after step k
  schedule.<kind> (f64 [13]): LambdaLR factors of get_{constant,linear,cosine}_schedule_with_warmup
    with warmup 3, total 10, at steps 0..12 (the factor the optimizer step `step` would use)
  schedule_w0.<kind> (f64 [7]): the same with warmup 0, total 4, steps 0..6
"""
import os
import platform

import safetensors
import torch
import transformers
from safetensors.torch import save_file
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "testdata", "optim")
META = {
    "generator": "tools/golden/make_optim_fixtures.py",
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "safetensors": safetensors.__version__,
    "python": platform.python_version(),
}

PARAMS = {"a": (7, 3), "b": (111,), "c": (1,), "d": (2, 3, 5)}
LR, BETAS, EPS, WEIGHT_DECAY, MAX_GRAD_NORM = 1e-2, (0.85, 0.99), 1e-6, 0.01, 0.5
WARMUP, TOTAL = 2, 5
# Total gradient norms of the five steps: above max_grad_norm (clipped) and below it (not).
GRAD_NORMS = [2.0, 0.3, 4.0, 0.45, 1.5]


def f64(x):
    return torch.tensor([float(x)], dtype=torch.float64)


def adamw_sequence(t):
    g = torch.Generator().manual_seed(21)
    params = {name: torch.nn.Parameter(torch.randn(shape, generator=g)) for name, shape in PARAMS.items()}
    for name, p in params.items():
        t[f"init.{name}"] = p.detach().clone()
    opt = torch.optim.AdamW(list(params.values()), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY,
                            foreach=False)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=TOTAL)
    for k, norm in enumerate(GRAD_NORMS, start=1):
        grads = {name: torch.randn(shape, generator=g) for name, shape in PARAMS.items()}
        raw = torch.sqrt(sum((x.double() ** 2).sum() for x in grads.values()))
        for name, p in params.items():
            grad = (grads[name].double() * (norm / raw)).float()
            t[f"step{k}.grad.{name}"] = grad.clone()
            p.grad = grad.clone()
        # transformers' Trainer: clip, optimizer.step(), lr_scheduler.step(), zero_grad().
        total = torch.nn.utils.clip_grad_norm_(list(params.values()), MAX_GRAD_NORM)
        coef = torch.clamp(MAX_GRAD_NORM / (total + 1e-6), max=1.0)
        t[f"step{k}.grad_norm"] = f64(total.item())
        t[f"step{k}.clip_coef"] = coef.reshape(1).float().clone()
        t[f"step{k}.lr"] = f64(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        opt.zero_grad()
        for name, p in params.items():
            state = opt.state[p]
            t[f"step{k}.param.{name}"] = p.detach().clone()
            t[f"step{k}.exp_avg.{name}"] = state["exp_avg"].clone()
            t[f"step{k}.exp_avg_sq.{name}"] = state["exp_avg_sq"].clone()
    t["hparams"] = torch.tensor([LR, BETAS[0], BETAS[1], EPS, WEIGHT_DECAY, MAX_GRAD_NORM, WARMUP, TOTAL],
                                dtype=torch.float64)


def schedule_factors(prefix, warmup, total, steps):
    out = {}
    makers = {
        "constant": lambda o: get_constant_schedule_with_warmup(o, num_warmup_steps=warmup),
        "linear": lambda o: get_linear_schedule_with_warmup(o, num_warmup_steps=warmup, num_training_steps=total),
        "cosine": lambda o: get_cosine_schedule_with_warmup(o, num_warmup_steps=warmup, num_training_steps=total),
    }
    for kind, make in makers.items():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make(opt)
        factors = []
        for _ in range(steps):
            factors.append(opt.param_groups[0]["lr"])  # base lr 1.0: the factor itself
            opt.step()
            sched.step()
        out[f"{prefix}.{kind}"] = torch.tensor(factors, dtype=torch.float64)
    return out


def main():
    t = {}
    adamw_sequence(t)
    t.update(schedule_factors("schedule", warmup=3, total=10, steps=13))
    t.update(schedule_factors("schedule_w0", warmup=0, total=4, steps=7))
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "adamw.safetensors")
    save_file({k: v.detach().contiguous() for k, v in t.items()}, path, metadata=META)
    print("wrote", os.path.normpath(path), len(t), "tensors")
    for k in range(1, len(GRAD_NORMS) + 1):
        print(f"step {k}: lr {t[f'step{k}.lr'].item():.6g} norm {t[f'step{k}.grad_norm'].item():.6g} "
              f"coef {t[f'step{k}.clip_coef'].item():.6g}")
    print({k: [round(x, 6) for x in v.tolist()] for k, v in t.items() if k.startswith("schedule")})


if __name__ == "__main__":
    main()
