"""A Hugging Face LLaMA checkpoint with SmolLM2-135M-Instruct's shapes and random weights.

For speed benchmarks on a machine the real model cannot be carried to (tools/gpu/run.sh): both
sides of a benchmark load the same directory, so the timings compare like with like; accuracy is
not measured on it. Usage: python3 tools/gpu/make_shaped_model.py OUT_DIR
"""
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main() -> None:
    out = sys.argv[1]
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    print(f"make_shaped_model: {sum(p.numel() for p in model.parameters())} parameters -> {out}")


if __name__ == "__main__":
    main()
