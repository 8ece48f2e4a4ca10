#!/usr/bin/env python3
"""Fixtures for formats/ (safetensors reader/writer, HF config.json parser), made with the
Python `safetensors` and `transformers` libraries.

Run by hand, from the repository root, in a virtual environment that has torch, safetensors and
transformers (e.g. /root/venv-golden):
    python tools/golden/make_format_fixtures.py
It rewrites tests/testdata/formats/{safetensors,hf_config}/ and the fuzz seed corpora under
tests/testdata/formats/fuzz/; tests/testdata/README.md lists the versions used. CI never runs this.

safetensors/
  python_written.safetensors  tensors of every dtype kernels/base has, plus U8/I8/I16/BOOL, a
                              rank-0 and a zero-size tensor, written by safetensors.torch.save_file
                              with metadata {"format": "pt"} (one key: the Python library orders
                              several keys by hash, so only one key is byte-reproducible).
  python_written.json         the same tensors' values as JSON, for the C++ test to compare.
  sharded/                    a two-shard checkpoint written by transformers' save_pretrained
                              (max_shard_size) of a tiny LlamaForCausalLM.
hf_config/
  {llama,mistral,qwen2}_v5.json  config.json written by transformers (v5 layout: rope_parameters,
                                 dtype) for tiny LlamaConfig / MistralConfig / Qwen2Config.
  llama3_v4.json, smollm_v4.json hand-written transformers-v4 layout (rope_theta, rope_scaling
                                 llama3 with the old and new key, torch_dtype, eos list).
"""
import json
import os
import platform
import shutil
import struct

import safetensors
import torch
import transformers
from safetensors.torch import save, save_file

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "testdata", "formats")


def path(*parts):
    p = os.path.join(OUT, *parts)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return p


def python_written():
    g = torch.Generator().manual_seed(7)
    t = {
        "w_f32": torch.randn(3, 5, generator=g),
        "w_f64": torch.randn(2, 3, generator=g, dtype=torch.float64),
        "w_bf16": torch.randn(4, 2, generator=g).to(torch.bfloat16),
        "w_f16": torch.randn(5, generator=g).to(torch.float16),
        "i_i32": torch.arange(-3, 3, dtype=torch.int32).reshape(2, 3),
        "i_i64": torch.tensor([[1 << 40, -7]], dtype=torch.int64),
        "b_u8": torch.arange(0, 6, dtype=torch.uint8),
        "b_i8": torch.tensor([-128, 127, 0], dtype=torch.int8),
        "b_i16": torch.tensor([-300, 300], dtype=torch.int16),
        "b_bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(4, 4, generator=g),
    }
    save_file(t, path("safetensors", "python_written.safetensors"), metadata={"format": "pt"})
    values = {}
    for k, v in t.items():
        values[k] = {"dtype": str(v.dtype), "shape": list(v.shape),
                     "values": v.double().flatten().tolist()}
    with open(path("safetensors", "python_written.json"), "w") as f:
        json.dump(values, f, indent=1, sort_keys=True)
        f.write("\n")
    return t


def tiny_llama_config(**kw):
    base = dict(vocab_size=64, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                rms_norm_eps=1e-5, tie_word_embeddings=False)
    base.update(kw)
    return base


def sharded():
    torch.manual_seed(11)
    cfg = transformers.LlamaConfig(**tiny_llama_config())
    model = transformers.LlamaForCausalLM(cfg)
    out = path("safetensors", "sharded", "x")[:-2]
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out, max_shard_size="8KB")
    for name in os.listdir(out):
        if not (name.endswith(".safetensors") or name.endswith(".index.json") or name == "config.json"):
            os.remove(os.path.join(out, name))


def configs():
    cfgs = {
        "llama_v5.json": transformers.LlamaConfig(**tiny_llama_config(), bos_token_id=1, eos_token_id=2),
        "mistral_v5.json": transformers.MistralConfig(**tiny_llama_config(), sliding_window=64),
        "qwen2_v5.json": transformers.Qwen2Config(**tiny_llama_config(tie_word_embeddings=True)),
    }
    for name, cfg in cfgs.items():
        cfg.dtype = torch.bfloat16
        cfg.architectures = [type(cfg).__name__.replace("Config", "ForCausalLM")]
        with open(path("hf_config", name), "w") as f:
            f.write(cfg.to_json_string(use_diff=False))
    # Hand-written transformers-v4 layouts (Llama 3.2-style and SmolLM2-135M-style).
    llama3_v4 = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 128, "rms_norm_eps": 1e-05,
        "max_position_embeddings": 131072, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
        "torch_dtype": "bfloat16", "transformers_version": "4.45.0.dev0",
    }
    smollm_v4 = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "vocab_size": 49152, "rms_norm_eps": 1e-05,
        "max_position_embeddings": 8192, "rope_theta": 100000, "rope_scaling": None,
        "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": None,
        "torch_dtype": "bfloat16", "transformers_version": "4.42.3",
    }
    llama3_old_key = dict(llama3_v4)
    llama3_old_key["rope_scaling"] = dict(llama3_v4["rope_scaling"])
    del llama3_old_key["rope_scaling"]["rope_type"]
    llama3_old_key["rope_scaling"]["type"] = "llama3"
    for name, cfg in [("llama3_v4.json", llama3_v4), ("smollm_v4.json", smollm_v4),
                      ("llama3_v4_type_key.json", llama3_old_key)]:
        with open(path("hf_config", name), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")


def fuzz_seeds():
    d = path("fuzz", "safetensors", "x")[:-2]
    small = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
             "b": torch.tensor([1, 2], dtype=torch.int64), "c": torch.tensor(1.0).to(torch.bfloat16)}
    with open(os.path.join(d, "small.safetensors"), "wb") as f:
        f.write(save(small, metadata={"format": "pt"}))
    with open(os.path.join(d, "empty.safetensors"), "wb") as f:
        f.write(save({}, metadata={"format": "pt"}))
    with open(os.path.join(d, "u8_zero_size.safetensors"), "wb") as f:
        f.write(save({"u": torch.zeros(3, dtype=torch.uint8), "z": torch.zeros(0, 2)}))
    c = path("fuzz", "hf_config", "x")[:-2]
    shutil.copy(path("hf_config", "llama3_v4.json"), os.path.join(c, "llama3_v4.json"))
    shutil.copy(path("hf_config", "qwen2_v5.json"), os.path.join(c, "qwen2_v5.json"))


def main():
    python_written()
    sharded()
    configs()
    fuzz_seeds()
    mine = ["safetensors", "hf_config", os.path.join("fuzz", "safetensors"), os.path.join("fuzz", "hf_config")]
    for dirpath, _, files in (w for d in mine for w in os.walk(os.path.join(OUT, d))):
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    print("safetensors", safetensors.__version__, "torch", torch.__version__,
          "transformers", transformers.__version__, "python", platform.python_version())


if __name__ == "__main__":
    main()
