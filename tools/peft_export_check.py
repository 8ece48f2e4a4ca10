#!/usr/bin/env python3
"""Checks that PEFT loads adapter directories written by sigmatune (formats/peft_adapter.h).

Run by hand in the golden venv (torch, transformers, peft 0.21.2, safetensors):

  bazel test //formats:peft_adapter_test //worker/model:hf_model_writer_test \
      --test_env=SIGMATUNE_PEFT_EXPORT_DIR=/tmp/sigmatune_peft_export --cache_test_results=no
  /root/venv-golden/bin/python tools/peft_export_check.py \
      --base /tmp/sigmatune_peft_export/base_tiny_gqa_tied \
      --reference-base tests/testdata/llama/tiny_gqa_tied \
      --adapter /tmp/sigmatune_peft_export/lora --adapter /tmp/sigmatune_peft_export/kasa_bf16

For each adapter: PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), adapter) must
load without missing/unexpected-key warnings; PEFT's config must carry our r, lora_alpha,
use_rslora and target_modules; PEFT must adapt exactly the modules our file holds, each with
rank = rows of our lora_A and the scaling our config implies (rank_pattern/alpha_pattern applied);
lora_A / lora_B (/ KaSA lora_diag) must equal our tensors bit for bit (after the f32 upcast of bf16
files); PEFT's delta weight must equal s·B·diag(d)·A from our tensors; and the adapted model's
logits must equal those of the base with W + s·B·A patched in (KaSA: W_res + s·B·diag(d)·A, W_res
being W without its r smallest singular triplets, which PEFT drops when it loads the adapter).
With --reference-base, the (sigmatune-written) base must also load in transformers to the same
config and the same weights as the reference checkpoint.
Exits non-zero on the first failure.
"""

import argparse
import json
import math
import os
import re
import sys
import warnings

import torch
from safetensors import safe_open
from transformers import LlamaForCausalLM

import peft
from peft import PeftModel
from peft.tuners.lora import LoraLayer

PREFIX = "base_model.model."


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def pattern_value(patterns, module, default):
    # PEFT's get_pattern_key: first key K (file order) with re.match(rf"(.*\.)?({K})$", module).
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def load_ours(adapter_dir):
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        config = json.load(f)
    tensors = {}
    with safe_open(os.path.join(adapter_dir, "adapter_model.safetensors"), "pt") as f:
        metadata = f.metadata()
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    if metadata.get("format") != "pt":
        fail(f"{adapter_dir}: safetensors metadata {metadata}, expected format pt")
    modules = {}
    for key, t in tensors.items():
        if not key.startswith(PREFIX):
            fail(f"{adapter_dir}: key {key} lacks the {PREFIX} prefix")
        rest = key[len(PREFIX):]
        for suffix, slot in ((".lora_A.weight", "A"), (".lora_B.weight", "B"), (".lora_diag", "d")):
            if rest.endswith(suffix):
                modules.setdefault(rest[: -len(suffix)], {})[slot] = t
                break
        else:
            fail(f"{adapter_dir}: unexpected key {key}")
    return config, modules


def check_base(base_dir, reference_dir):
    ours = LlamaForCausalLM.from_pretrained(base_dir)
    ref = LlamaForCausalLM.from_pretrained(reference_dir)
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
                  "rms_norm_eps", "tie_word_embeddings", "bos_token_id", "eos_token_id",
                  "pad_token_id"):
        a, b = getattr(ours.config, field), getattr(ref.config, field)
        if a != b:
            fail(f"base config {field}: ours {a} vs reference {b}")
    a_rope = getattr(ours.config, "rope_parameters", None) or {}
    b_rope = getattr(ref.config, "rope_parameters", None) or {}
    if a_rope != b_rope:
        fail(f"base rope parameters: ours {a_rope} vs reference {b_rope}")
    sa, sb = ours.state_dict(), ref.state_dict()
    if sa.keys() != sb.keys():
        fail(f"base state dict keys differ: {sorted(set(sa) ^ set(sb))}")
    for k in sa:
        if not torch.equal(sa[k], sb[k]):
            fail(f"base tensor {k} differs from the reference")
    ids = torch.tensor([[1, 5, 9, 33, 2, 7]])
    with torch.no_grad():
        if not torch.equal(ours(ids).logits, ref(ids).logits):
            fail("base logits differ from the reference")
    print(f"OK base {base_dir}: transformers loads it; config, {len(sa)} tensors and logits equal "
          f"the reference {reference_dir}")


def check_adapter(base_dir, adapter_dir):
    config, ours = load_ours(adapter_dir)
    base = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    reference = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, adapter_dir)
    for w in caught:
        text = str(w.message)
        if re.search(r"missing|unexpected|not found|did not match", text, re.IGNORECASE):
            fail(f"{adapter_dir}: PEFT warned while loading: {text}")
    pc = model.peft_config["default"]
    if pc.r != config["r"] or pc.lora_alpha != config["lora_alpha"]:
        fail(f"{adapter_dir}: PEFT config r={pc.r} alpha={pc.lora_alpha}, file r={config['r']} "
             f"alpha={config['lora_alpha']}")
    if pc.use_rslora != config["use_rslora"]:
        fail(f"{adapter_dir}: use_rslora {pc.use_rslora} vs {config['use_rslora']}")
    if set(pc.target_modules) != set(config["target_modules"]):
        fail(f"{adapter_dir}: target_modules {pc.target_modules} vs {config['target_modules']}")
    kasa = config.get("kasa_config") is not None
    if kasa != (getattr(pc, "kasa_config", None) is not None):
        fail(f"{adapter_dir}: kasa_config not carried over")

    adapted = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            adapted[name[len(PREFIX):] if name.startswith(PREFIX) else name] = module
    if set(adapted) != set(ours):
        fail(f"{adapter_dir}: PEFT adapted {sorted(set(adapted) ^ set(ours))} differently from "
             f"the modules in our file")

    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    deltas = {}
    for name, w in sorted(ours.items()):
        m = adapted[name]
        a, b = w["A"].float(), w["B"].float()
        r = a.shape[0]
        if m.r["default"] != r or pattern_value(rank_pattern, name, config["r"]) != r:
            fail(f"{adapter_dir}: {name}: PEFT rank {m.r['default']}, our lora_A has {r} rows")
        alpha = pattern_value(alpha_pattern, name, config["lora_alpha"])
        scale = alpha / math.sqrt(r) if config["use_rslora"] else alpha / r
        if not math.isclose(m.scaling["default"], scale, rel_tol=1e-12):
            fail(f"{adapter_dir}: {name}: PEFT scaling {m.scaling['default']}, expected {scale}")
        if not torch.equal(m.lora_A["default"].weight.detach(), a):
            fail(f"{adapter_dir}: {name}: lora_A differs from ours")
        if not torch.equal(m.lora_B["default"].weight.detach(), b):
            fail(f"{adapter_dir}: {name}: lora_B differs from ours")
        d = torch.ones(r)
        if kasa:
            if "d" not in w:
                fail(f"{adapter_dir}: {name}: our file lacks lora_diag")
            d = w["d"].float()
            if not torch.equal(m.lora_diag["default"].detach(), d):
                fail(f"{adapter_dir}: {name}: lora_diag differs from ours")
        expected = scale * (b * d) @ a
        if "default" in m.lora_variant:  # KaSA: LoraLayer.get_delta_weight ignores the diagonal
            got = m.lora_variant["default"]._get_delta_weight(m, "default").detach()
        else:
            got = m.get_delta_weight("default").detach()
        if not torch.allclose(got, expected, rtol=1e-5, atol=1e-6):
            fail(f"{adapter_dir}: {name}: delta weight differs (max "
                 f"{(got - expected).abs().max().item():.3g})")
        deltas[name] = expected

    # Patch the expected weights into an untouched copy of the base and compare logits:
    # W + s·B·A for LoRA; for KaSA W_res + s·B·diag(d)·A with W_res = W without its r smallest
    # singular triplets (PEFT truncates the base when it loads a KaSA adapter).
    params = dict(reference.named_parameters())
    with torch.no_grad():
        for name, delta in deltas.items():
            w = params[name + ".weight"]
            if kasa:
                u, sv, vh = torch.linalg.svd(w.float(), full_matrices=False)
                keep = sv.shape[0] - ours[name]["A"].shape[0]
                w.copy_((u[:, :keep] * sv[:keep]) @ vh[:keep])
            w.add_(delta)
        ids = torch.tensor([[1, 5, 9, 33, 2, 7, 11, 40]])
        got = model(ids).logits
        want = reference(ids).logits
    err = (got - want).abs().max().item()
    what = "W_res + s·B·diag(d)·A" if kasa else "W + s·B·A"
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        fail(f"{adapter_dir}: logits differ from {what} (max abs {err:.3g})")
    note = f"; logits match {what} (max abs diff {err:.2g})"
    ranks = sorted({w["A"].shape[0] for w in ours.values()})
    dtype = next(iter(ours.values()))["A"].dtype
    print(f"OK {adapter_dir}: peft {peft.__version__} loaded {len(ours)} modules "
          f"(r={config['r']}, lora_alpha={config['lora_alpha']}, use_rslora={config['use_rslora']}, "
          f"ranks {ranks}, file dtype {dtype}, init_lora_weights={config['init_lora_weights']!r}"
          f"{', kasa_config=' + json.dumps(config['kasa_config']) if kasa else ''}); "
          f"lora_A/lora_B{'/lora_diag' if kasa else ''} equal ours bit for bit{note}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="HF model directory the adapters belong to")
    p.add_argument("--adapter", action="append", required=True, help="adapter directory (repeatable)")
    p.add_argument("--reference-base", help="checkpoint the --base must equal (e.g. the fixture)")
    args = p.parse_args()
    torch.manual_seed(0)
    if args.reference_base:
        check_base(args.base, args.reference_base)
    for adapter in args.adapter:
        check_adapter(args.base, adapter)
    print("ALL OK")


if __name__ == "__main__":
    main()
