#!/usr/bin/env python3
"""Golden GGUF fixtures for formats/gguf*, made with the `gguf` package (llama.cpp's gguf-py).

Run by hand, from the repository root, in a virtual environment that has gguf, numpy, torch and
transformers (CI never runs this; the fixtures are committed):
    python tools/golden/make_gguf_fixtures.py [--smollm2 PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf]

Writes under tests/testdata/formats/gguf/:
  dequant.gguf   random blocks of every supported ggml type (tensor "q.<TYPE>", the raw blocks
                 with f16 scale fields set to finite values) next to "ref.<TYPE>", F32, the output
                 of gguf.quants.dequantize (the C++ dequantiser must match it bit for bit); plus
                 metadata of every value type, arrays and a nested array (key prefix "test.").
  permute.gguf   q/k row permutation: "hf.q"/"hf.k" (Hugging Face layout), "gguf.q"/"gguf.k"
                 (llama.cpp convert_hf_to_gguf LlamaModel.permute), and "unpermuted.q"/"unpermuted.k"
                 made by transformers' LlamaTensorProcessor._reverse_permute_weights from gguf.*.
  tiny_llama.gguf  a 2-block llama with tied embeddings and tokenizer metadata (names, config).
  smollm2_ref.gguf (with --smollm2) reference values from the real SmolLM2 file: for a few
                 tensors the first and last 512 dequantised values (ggml order) and, for blk.0
                 attn_q/attn_k, the first 4 rows after transformers' reverse permutation.
Also copies dequant.gguf and tiny_llama.gguf to tests/testdata/formats/fuzz/gguf/ as fuzz seeds.
"""
import argparse
import importlib.metadata
import os
import platform
import shutil

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V
import torch
import transformers
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "testdata", "formats", "gguf")
FUZZ = os.path.join(ROOT, "tests", "testdata", "formats", "fuzz", "gguf")
VERSIONS = (f"gguf {importlib.metadata.version('gguf')}, "
            f"numpy {np.__version__}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, python {platform.python_version()}")


def writer(name, arch="sigmatune-test"):
    path = os.path.join(OUT, name)
    w = gguf.GGUFWriter(path, arch)
    w.add_string("sigmatune.generator", "tools/golden/make_gguf_fixtures.py")
    w.add_string("sigmatune.versions", VERSIONS)
    return w, path


def finish(w, path):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", os.path.normpath(path), os.path.getsize(path), "bytes")


def f16_bytes(rng, n, lo=-2.0, hi=2.0):
    """n finite f16 values as raw bytes shape (n, 2)."""
    return rng.uniform(lo, hi, size=n).astype(np.float16).view(np.uint8).reshape(n, 2)


# Byte offsets of the f16 fields inside one block of each type.
F16_FIELDS = {
    T.Q8_0: [0],
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q4_K: [0, 2],
    T.Q6_K: [208],  # d is last
}


def random_blocks(rng, qtype, rows, cols):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    nblk = rows * cols // block
    raw = rng.integers(0, 256, size=(nblk, size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        raw[:, off:off + 2] = f16_bytes(rng, nblk, 0.001 if qtype == T.Q4_K else -2.0, 2.0)
    return raw.reshape(rows, cols // block * size)


def dequant_fixture():
    rng = np.random.default_rng(20261122)
    w, path = writer("dequant.gguf")
    # Metadata of every value type, arrays and a nested array.
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.15625)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "h\u00e9llo \u2603")
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62))
    w.add_float64("test.f64", 1.0 / 3.0)
    w.add_key_value("test.array_i32", [1, -2, 3], V.ARRAY, sub_type=V.INT32)
    w.add_key_value("test.array_f32", [0.5, -1.25], V.ARRAY, sub_type=V.FLOAT32)
    w.add_key_value("test.array_string", ["a", "", "b c"], V.ARRAY, sub_type=V.STRING)
    w.add_key_value("test.array_nested", [[1, 2], [3]], V.ARRAY, sub_type=V.ARRAY)
    specs = [(T.F32, 3, 40), (T.F16, 3, 40), (T.BF16, 3, 40), (T.Q8_0, 3, 64), (T.Q4_0, 3, 64),
             (T.Q4_1, 3, 64), (T.Q4_K, 2, 512), (T.Q6_K, 2, 512)]
    for qtype, rows, cols in specs:
        if qtype == T.F32:
            vals = rng.standard_normal((rows, cols)).astype(np.float32)
            raw = vals.view(np.uint8)
        elif qtype == T.F16:
            raw = rng.standard_normal((rows, cols)).astype(np.float16).view(np.uint8)
        elif qtype == T.BF16:
            bits = (rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint32) >> 16)
            raw = bits.astype(np.uint16).view(np.uint8)
        else:
            raw = random_blocks(rng, qtype, rows, cols)
        ref = gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(rows, cols)
        assert np.all(np.isfinite(ref)), qtype.name
        w.add_tensor(f"q.{qtype.name}", raw, raw_dtype=qtype)
        w.add_tensor(f"ref.{qtype.name}", ref)
    finish(w, path)
    return path


def hf_to_gguf_permute(weights, n_head, n_head_kv):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def permute_fixture():
    rng = np.random.default_rng(7)
    n_head, n_kv, head_dim, hidden = 4, 2, 6, 5
    w, path = writer("permute.gguf")
    w.add_uint32("test.n_head", n_head)
    w.add_uint32("test.n_head_kv", n_kv)
    proc = LlamaTensorProcessor(config={"num_attention_heads": n_head, "num_key_value_heads": n_kv})
    for tag, rows in [("q", n_head * head_dim), ("k", n_kv * head_dim)]:
        hf = rng.standard_normal((rows, hidden)).astype(np.float32)
        perm = hf_to_gguf_permute(hf, n_head, n_head if tag == "q" else n_kv)
        back = proc.process(perm, f"blk.0.attn_{tag}.weight").weights
        assert np.array_equal(back, hf), tag
        w.add_tensor(f"hf.{tag}", hf)
        w.add_tensor(f"gguf.{tag}", np.ascontiguousarray(perm))
        w.add_tensor(f"unpermuted.{tag}", np.ascontiguousarray(back))
    finish(w, path)


def tiny_llama_fixture():
    rng = np.random.default_rng(3)
    hidden, ffn, heads, kv, vocab, blocks = 16, 24, 4, 2, 8, 2
    w, path = writer("tiny_llama.gguf", arch="llama")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(blocks)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hidden // heads)
    w.add_uint32("general.alignment", 64)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    toks = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "\u0120a", "c"]
    w.add_token_list(toks)
    w.add_token_types([3, 3, 3, 1, 1, 1, 1, 1])
    w.add_token_merges(["a b", "\u0120 a"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")

    def t(name, *shape):
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))

    t("token_embd.weight", vocab, hidden)
    for b in range(blocks):
        t(f"blk.{b}.attn_norm.weight", hidden)
        t(f"blk.{b}.attn_q.weight", hidden, hidden)
        t(f"blk.{b}.attn_k.weight", kv * hidden // heads, hidden)
        t(f"blk.{b}.attn_v.weight", kv * hidden // heads, hidden)
        t(f"blk.{b}.attn_output.weight", hidden, hidden)
        t(f"blk.{b}.ffn_norm.weight", hidden)
        t(f"blk.{b}.ffn_gate.weight", ffn, hidden)
        t(f"blk.{b}.ffn_up.weight", ffn, hidden)
        t(f"blk.{b}.ffn_down.weight", hidden, ffn)
    t("output_norm.weight", hidden)
    finish(w, path)


def smollm2_fixture(src):
    r = gguf.GGUFReader(src)
    tensors = {t.name: t for t in r.tensors}
    w, path = writer("smollm2_ref.gguf")
    names = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
             "blk.7.ffn_down.weight", "blk.29.ffn_up.weight", "output_norm.weight"]
    for name in names:
        t = tensors[name]
        deq = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        w.add_tensor(f"{name}.head", np.ascontiguousarray(deq[:512]))
        w.add_tensor(f"{name}.tail", np.ascontiguousarray(deq[-512:]))
    proc = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    for tag in ["q", "k"]:
        t = tensors[f"blk.0.attn_{tag}.weight"]
        deq = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)  # [out, in]
        hf = proc.process(deq, f"blk.0.attn_{tag}.weight").weights
        w.add_tensor(f"blk.0.attn_{tag}.hf_rows0to3", np.ascontiguousarray(hf[:4]))
    finish(w, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", default=os.path.expanduser(
        "~/.cache/sigmatune/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(FUZZ, exist_ok=True)
    dequant_fixture()
    permute_fixture()
    tiny_llama_fixture()
    if os.path.exists(args.smollm2):
        smollm2_fixture(args.smollm2)
    else:
        print("skipped smollm2_ref.gguf: no", args.smollm2)
    for name in ["dequant.gguf", "tiny_llama.gguf", "permute.gguf"]:
        shutil.copyfile(os.path.join(OUT, name), os.path.join(FUZZ, name))
    print("versions:", VERSIONS)


if __name__ == "__main__":
    main()
