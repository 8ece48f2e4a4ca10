#!/usr/bin/env python3
"""Golden fixtures for the LLaMA building-block ops (kernels/ops: embedding, rms_norm, rope,
swiglu, cross_entropy, attention), made with PyTorch and transformers' own functions on the CPU.

Run by hand, from the repository root, in a virtual environment that has torch, transformers and
safetensors (e.g. /root/venv-golden):
    python tools/golden/make_nn_fixtures.py
It rewrites tests/testdata/nn/*.safetensors; each file's __metadata__ records the versions used and
tests/testdata/README.md lists them. CI never runs this (the fixtures are committed).

Inputs are stored as float32 (what the C++ tests feed the f32 reference); where a reference can be
computed in float64 from those same values it is (names ending in _f64), so the C++ f64 path can be
checked tightly and the f32 path against a known-accurate value. Gradients come from autograd.
"""
import os
import platform

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import (LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb,
                                                      repeat_kv)

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "testdata", "nn")
META = {
    "generator": "tools/golden/make_nn_fixtures.py",
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "python": platform.python_version(),
}


def save(name, tensors):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name + ".safetensors")
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path, metadata=META)
    print("wrote", os.path.normpath(path), sorted(tensors))


def embedding():
    g = torch.Generator().manual_seed(11)
    table = torch.randn(11, 5, generator=g).double().requires_grad_()  # f32 values, f64 math
    ids = torch.tensor([3, 0, 10, 3, 7, 3, 0], dtype=torch.int32)
    out = F.embedding(ids.long(), table)
    dout = torch.randn(out.shape, generator=g).double()
    (out * dout).sum().backward()
    save("embedding", {"table": table.float(), "ids": ids, "dout": dout.float(), "out": out.float(),
                       "dtable_f64": table.grad})


def rms_norm():
    g = torch.Generator().manual_seed(12)
    t = {}
    for tokens, d in ((7, 24), (1, 64)):
        key = f"t{tokens}d{d}"
        x = (torch.randn(tokens, d, generator=g) * 3).requires_grad_()
        norm = LlamaRMSNorm(d, eps=1e-5)
        with torch.no_grad():
            norm.weight.copy_(torch.randn(d, generator=g))
        y = norm(x)  # transformers' own module, float32
        dy = torch.randn(tokens, d, generator=g)
        (y * dy).sum().backward()
        t.update({key + "_x": x, key + "_w": norm.weight, key + "_dy": dy, key + "_y": y, key + "_dx": x.grad,
                  key + "_dw": norm.weight.grad})
    save("rms_norm", t)


def rope():
    g = torch.Generator().manual_seed(13)
    t = {}
    cases = {
        # name: (config kwargs, positions)
        "default": (dict(hidden_size=24, num_attention_heads=3, head_dim=8,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
                    [0, 1, 2, 3, 0, 1, 2]),
        "llama3": (dict(hidden_size=256, num_attention_heads=4, head_dim=64, max_position_embeddings=131072,
                        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 8192}),
                   [0, 1, 7, 4095, 8191, 20000, 131071]),
    }
    for name, (kwargs, positions) in cases.items():
        config = LlamaConfig(**kwargs)
        emb = LlamaRotaryEmbedding(config)
        heads, hd = config.num_attention_heads, config.head_dim
        pos = torch.tensor(positions, dtype=torch.int32)
        x = torch.randn(len(positions), heads, hd, generator=g).requires_grad_()
        cos, sin = emb(x, pos.long()[None, :])  # [1, tokens, hd]
        # apply_rotary_pos_emb on [tokens, heads, hd]: cos/sin [tokens, hd] unsqueezed at dim 1.
        out, _ = apply_rotary_pos_emb(x, x, cos[0], sin[0], unsqueeze_dim=1)
        dy = torch.randn(out.shape, generator=g)
        (out * dy).sum().backward()
        t.update({name + "_inv_freq": emb.inv_freq, name + "_positions": pos, name + "_x": x, name + "_out": out,
                  name + "_dy": dy, name + "_dx": x.grad})
    save("rope", t)


def swiglu():
    g = torch.Generator().manual_seed(14)
    gate = (torch.randn(7, 13, generator=g) * 4).double().requires_grad_()  # f32 values, f64 math
    up = torch.randn(7, 13, generator=g).double().requires_grad_()
    out = F.silu(gate) * up
    dout = torch.randn(out.shape, generator=g).double()
    (out * dout).sum().backward()
    save("swiglu", {"gate": gate.float(), "up": up.float(), "dout": dout.float(), "out_f64": out,
                    "dgate_f64": gate.grad, "dup_f64": up.grad})


def cross_entropy():
    g = torch.Generator().manual_seed(15)
    t = {}
    # lm_head form: 111 tokens, d 16, vocab 4097; some targets ignored.
    hidden = torch.randn(111, 16, generator=g).float()
    weight = (torch.randn(4097, 16, generator=g) * 0.5).float()
    targets = torch.randint(0, 4097, (111,), generator=g, dtype=torch.int32)
    targets[::5] = -100
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    loss = F.cross_entropy(h64 @ w64.T, targets.long(), ignore_index=-100)
    loss.backward()
    t.update({"hidden": hidden, "weight": weight, "targets": targets, "loss_f64": loss.detach().reshape(1),
              "dhidden_f64": h64.grad, "dweight_f64": w64.grad})
    # plain logits form: 7 x 11.
    logits = (torch.randn(7, 11, generator=g) * 3).float()
    ptargets = torch.tensor([1, -100, 10, 0, 5, -100, 5], dtype=torch.int32)
    l64 = logits.double().requires_grad_()
    ploss = F.cross_entropy(l64, ptargets.long(), ignore_index=-100)
    ploss.backward()
    t.update({"logits": logits, "logits_targets": ptargets, "logits_loss_f64": ploss.detach().reshape(1),
              "dlogits_f64": l64.grad})
    save("cross_entropy", t)


def attention():
    g = torch.Generator().manual_seed(16)
    t = {}
    cases = {"gqa3": (6, 2, 8, [3, 0, 5, 1]), "mha": (2, 2, 64, [7])}
    for name, (heads, kv, hd, lens) in cases.items():
        tokens = sum(lens)
        q = torch.randn(tokens, heads, hd, generator=g).float()
        k = torch.randn(tokens, kv, hd, generator=g).float()
        v = torch.randn(tokens, kv, hd, generator=g).float()
        dout = torch.randn(tokens, heads, hd, generator=g).float()
        q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
        outs, lses = [], []
        start = 0
        for n in lens:
            sl = slice(start, start + n)
            start += n
            if n == 0:
                continue
            # [1, heads, n, hd] as transformers' eager / sdpa attention sees them, with repeat_kv for GQA.
            qs = q64[sl].transpose(0, 1)[None]
            ks = repeat_kv(k64[sl].transpose(0, 1)[None], heads // kv)
            vs = repeat_kv(v64[sl].transpose(0, 1)[None], heads // kv)
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)
            outs.append(o[0].transpose(0, 1))
            scores = (qs @ ks.transpose(-1, -2)) / hd ** 0.5
            mask = torch.ones(n, n, dtype=torch.bool).tril()
            lses.append(torch.logsumexp(scores.masked_fill(~mask, float("-inf")), dim=-1)[0].T)
        out = torch.cat(outs)
        (out * dout.double()).sum().backward()
        cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)
        t.update({name + "_q": q, name + "_k": k, name + "_v": v, name + "_dout": dout, name + "_cu_seqlens": cu,
                  name + "_out_f64": out.detach(), name + "_lse_f64": torch.cat(lses).detach(),
                  name + "_dq_f64": q64.grad, name + "_dk_f64": k64.grad, name + "_dv_f64": v64.grad})
    save("attention", t)


if __name__ == "__main__":
    embedding()
    rms_norm()
    rope()
    swiglu()
    cross_entropy()
    attention()
