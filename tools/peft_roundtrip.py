#!/usr/bin/env python3
"""Checks that transformers + PEFT load what sigmatune's export step writes (worker/train/export.h).

Run by hand in the golden venv (torch, transformers, peft 0.21.2, safetensors), from the repo root:

  bazel test //worker/train:export_test --test_env=SIGMATUNE_EXPORT_CHECK_DIR=/tmp/st_export \
      --cache_test_results=no
  /root/venv-golden/bin/python tools/peft_roundtrip.py /tmp/st_export

For every <model>/<method>/ under the directory (written by the test, with logits.safetensors holding
the packed batch's input_ids, cu_seqlens and sigmatune's merged-model logits):
  original + adapter_lora   LlamaForCausalLM.from_pretrained(tests/testdata/llama/<model>) +
                            PeftModel.from_pretrained(<dir>/adapter_lora)   (rank 2r plain LoRA)
  residual_base + adapter   from_pretrained(<dir>/residual_base) + PeftModel.from_pretrained(<dir>/adapter)
                            (LoRA: the original base + adapter)
  merged                    from_pretrained(<dir>/merged)
  and, for information only:
  KaSA: original + adapter  PEFT truncates the original base itself on load (kasa_config)
  PiSSA: the native adapter relabelled init_lora_weights="pissa", on residual_base and on the
         original base (PEFT re-runs PiSSA on whatever base it gets)
  CorDA: relabelled init_lora_weights="corda" (PEFT needs preprocess_corda's eigens)
Every model runs in fp32 with eager attention, one sequence at a time (batch 1; the ids are
packed); the logits are compared with sigmatune's (max abs and relative Frobenius error). A load
must also adapt exactly the modules of the file with its tensors bit for bit (no silently skipped
keys). Exits non-zero when a required form fails to load or differs by more than --tolerance
(relative).
"""

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import warnings

import torch
import transformers
from safetensors import safe_open
from transformers import LlamaForCausalLM

import peft
from peft import PeftModel
from peft.tuners.lora import LoraLayer

PREFIX = "base_model.model."
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_model(path):
    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def adapter_tensors(adapter_dir):
    with safe_open(os.path.join(adapter_dir, "adapter_model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def load_peft(base_dir, adapter_dir):
    """PeftModel.from_pretrained + checks that the file's tensors are exactly what PEFT holds."""
    base = load_model(base_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, adapter_dir).eval()
    for w in caught:
        text = str(w.message)
        if "missing" in text.lower() or "unexpected" in text.lower():
            raise RuntimeError(f"PEFT warned while loading {adapter_dir}: {text}")
    ours = adapter_tensors(adapter_dir)
    held = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            held[f"{name}.lora_A.weight"] = module.lora_A["default"].weight
            held[f"{name}.lora_B.weight"] = module.lora_B["default"].weight
            if hasattr(module, "lora_diag") and "default" in module.lora_diag:
                held[f"{name}.lora_diag"] = module.lora_diag["default"]
    if set(held) != set(ours):
        raise RuntimeError(f"PEFT adapted other modules than the file holds: {sorted(set(held) ^ set(ours))[:4]}")
    for k, t in ours.items():
        if not torch.equal(held[k].detach().float(), t.float()):
            raise RuntimeError(f"PEFT's {k} differs from the file")
    return model


def run(model, ids, cu):
    outs = []
    with torch.no_grad():
        for s in range(len(cu) - 1):
            seq = ids[cu[s]:cu[s + 1]].long().unsqueeze(0)
            outs.append(model(input_ids=seq).logits[0].float())
    return torch.cat(outs, dim=0)


def compare(got, want):
    diff = got.double() - want.double()
    return diff.abs().max().item(), (diff.norm() / want.double().norm()).item()


def relabelled(adapter_dir, init_name, tmp_root):
    """A copy of the adapter whose config says init_lora_weights=init_name."""
    out = tempfile.mkdtemp(dir=tmp_root)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(os.path.join(adapter_dir, f), out)
    path = os.path.join(out, "adapter_config.json")
    with open(path) as f:
        config = json.load(f)
    config["init_lora_weights"] = init_name
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("export_dir", help="SIGMATUNE_EXPORT_CHECK_DIR of the export test")
    p.add_argument("--tolerance", type=float, default=1e-5, help="max relative Frobenius error (default 1e-5)")
    args = p.parse_args()
    torch.manual_seed(0)
    transformers.utils.logging.disable_progress_bar()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")

    files = sorted(glob.glob(os.path.join(args.export_dir, "*", "*", "logits.safetensors")))
    if not files:
        print(f"no */*/logits.safetensors under {args.export_dir}; run the export test with "
              "--test_env=SIGMATUNE_EXPORT_CHECK_DIR first")
        return 2
    tmp_root = tempfile.mkdtemp(prefix="peft_roundtrip_")
    rows, failures = [], []
    for lf in files:
        case_dir = os.path.dirname(lf)
        with safe_open(lf, "pt") as f:
            meta = f.metadata()
            ids, cu, want = f.get_tensor("input_ids"), f.get_tensor("cu_seqlens").tolist(), f.get_tensor("logits")
        model_name, method = meta["model"], meta["method"]
        original = os.path.join(REPO_ROOT, meta["base"])
        residual = os.path.join(case_dir, "residual_base")
        native_base = residual if os.path.isdir(residual) else original
        native_label = "residual_base + adapter" if native_base == residual else "original + adapter"

        forms = [  # (label, build, required)
            ("original + adapter_lora", lambda: load_peft(original, os.path.join(case_dir, "adapter_lora")), True),
            (native_label, lambda: load_peft(native_base, os.path.join(case_dir, "adapter")), True),
            ("merged", lambda: load_model(os.path.join(case_dir, "merged")), True),
            ("original (no adapter)", lambda: load_model(original), False),
        ]
        adapter = os.path.join(case_dir, "adapter")
        if method == "kasa":
            forms.append(("original + adapter (PEFT truncates)", lambda: load_peft(original, adapter), False))
        if method == "pissa":
            forms.append(('residual_base + adapter as "pissa"',
                          lambda: load_peft(residual, relabelled(adapter, "pissa", tmp_root)), False))
            forms.append(('original + adapter as "pissa"',
                          lambda: load_peft(original, relabelled(adapter, "pissa", tmp_root)), False))
        if method.startswith("corda"):
            forms.append(('residual_base + adapter as "corda"',
                          lambda: load_peft(residual, relabelled(adapter, "corda", tmp_root)), False))

        for label, build, required in forms:
            try:
                got = run(build(), ids, cu)
                max_abs, rel = compare(got, want)
                ok = rel <= args.tolerance
                status = "ok" if ok else ("FAIL" if required else "differs")
                rows.append((model_name, method, label, f"{max_abs:.2e}", f"{rel:.2e}", status))
                if required and not ok:
                    failures.append(f"{model_name}/{method}: {label}: relative error {rel:.3g}")
            except Exception as e:  # report exactly why PEFT could not load the form
                first = str(e).splitlines()[0] if str(e) else ""
                msg = f"{type(e).__name__}: {first.split('. ')[0][:120]}"
                rows.append((model_name, method, label, "-", "-", msg))
                if required:
                    failures.append(f"{model_name}/{method}: {label}: {msg}")
    shutil.rmtree(tmp_root, ignore_errors=True)

    header = ("model", "method", "form (PEFT / transformers)", "max abs err", "rel err", "result")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"ALL REQUIRED FORMS OK (relative error <= {args.tolerance:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
