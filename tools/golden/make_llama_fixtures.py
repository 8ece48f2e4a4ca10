#!/usr/bin/env python3
"""Golden fixtures for the LLaMA engine (kernels/model): tiny random checkpoints and what
transformers computes on a fixed batch.

Run by hand, from the repository root, in a virtual environment with torch, transformers and
safetensors (tests/testdata/README.md lists the versions used):
    python tools/golden/make_llama_fixtures.py

For each tiny model it writes tests/testdata/llama/<name>/:
  config.json, model.safetensors      the checkpoint, as save_pretrained writes it (fp32)
  expected.safetensors                 a fixed batch of two sequences (right-padded, attention mask)
                                       and, for the VALID tokens only, concatenated in sequence order
                                       (= our packed layout):
    input_ids [T] i32, positions [T] i32, cu_seqlens [3] i32, labels [T] i32 (-100 = ignored,
    already shifted: labels[t] is the target of token t), logits [T, vocab], loss [] (mean over
    the non-ignored targets, as LlamaForCausalLM computes it),
    and for every nn.Linear <module> (HF names, e.g. model.layers.0.self_attn.q_proj):
    <module>.input [T, in], <module>.output [T, out], <module>.grad_input [T, in],
    <module>.grad_output [T, out]  (gradients of the loss), plus hidden.grad [T, hidden] = d loss /
    d input embeddings.
"""
import json
import os
import platform

import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "testdata", "llama")

MODELS = {
    # GQA (6 query heads over 2 KV heads) and tied embeddings.
    "tiny_gqa_tied": dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                          num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                          rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=64),
    # No GQA, untied, llama3 rope scaling with a short original context so it bites.
    "tiny_mha_llama3": dict(vocab_size=101, hidden_size=40, intermediate_size=72, num_hidden_layers=3,
                            num_attention_heads=5, num_key_value_heads=5, tie_word_embeddings=False,
                            rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=64,
                            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
}
LENGTHS = (13, 9)


def make(name, kwargs, seed):
    torch.manual_seed(seed)
    config = LlamaConfig(attn_implementation="eager", **kwargs)
    model = LlamaForCausalLM(config).float().eval()
    # Random init is tiny-std; widen it so every path carries signal.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
            else:
                p.uniform_(0.5, 1.5)
    out_dir = os.path.join(OUT, name)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    os.remove(os.path.join(out_dir, "generation_config.json"))  # not needed by the engine

    g = torch.Generator().manual_seed(seed + 1)
    t_max = max(LENGTHS)
    ids = torch.zeros(len(LENGTHS), t_max, dtype=torch.long)
    mask = torch.zeros(len(LENGTHS), t_max, dtype=torch.long)
    labels = torch.full((len(LENGTHS), t_max), -100, dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        ids[b, :n] = torch.randint(0, config.vocab_size, (n,), generator=g)
        mask[b, :n] = 1
        labels[b, :n] = ids[b, :n]
        labels[b, 2] = -100  # an ignored target inside the sequence
    # HF shifts internally: logits[t] predicts labels[t + 1].

    captured = {}

    def hook(mod_name):
        def fn(module, inputs, output):
            x = inputs[0]
            x.retain_grad()
            output.retain_grad()
            captured[mod_name] = (x, output)
        return fn

    for mod_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(hook(mod_name))

    embeds = model.model.embed_tokens(ids).detach().requires_grad_(True)
    result = model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
    result.loss.backward()

    valid = [(b, t) for b, n in enumerate(LENGTHS) for t in range(n)]
    def pack(x):
        return torch.stack([x[b, t] for b, t in valid]).contiguous()

    shifted = torch.full_like(labels, -100)
    shifted[:, :-1] = labels[:, 1:]
    for b, n in enumerate(LENGTHS):
        shifted[b, n - 1:] = -100
    tensors = {
        "input_ids": pack(ids).to(torch.int32),
        "positions": torch.tensor([t for _, t in valid], dtype=torch.int32),
        "cu_seqlens": torch.tensor([0, LENGTHS[0], sum(LENGTHS)], dtype=torch.int32),
        "labels": pack(shifted).to(torch.int32),
        "logits": pack(result.logits.detach()),
        "loss": result.loss.detach().reshape(()),
        "hidden.grad": pack(embeds.grad),
    }
    for mod_name, (x, y) in captured.items():
        tensors[mod_name + ".input"] = pack(x.detach())
        tensors[mod_name + ".output"] = pack(y.detach())
        tensors[mod_name + ".grad_input"] = pack(x.grad)
        tensors[mod_name + ".grad_output"] = pack(y.grad)
    meta = {"generator": "tools/golden/make_llama_fixtures.py", "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}
    save_file(tensors, os.path.join(out_dir, "expected.safetensors"), metadata=meta)
    print("wrote", os.path.normpath(out_dir), "loss", float(result.loss), len(tensors), "tensors")


if __name__ == "__main__":
    torch.set_num_threads(1)
    for i, (name, kwargs) in enumerate(MODELS.items()):
        make(name, kwargs, seed=100 + i)
