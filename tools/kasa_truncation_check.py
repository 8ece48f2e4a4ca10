#!/usr/bin/env python3
"""How much KaSA's base truncation alone changes SmolLM2-135M-Instruct, measured with PyTorch
(independently of sigmatune): every q/k/v/o/gate/up/down weight loses its r smallest singular
triplets (W_res = top-(k - r) of the SVD), then the causal-LM loss on 8 arithmetic chats of
examples/data is compared with the original's. Used for docs/results.md.

    /root/venv-golden/bin/python tools/kasa_truncation_check.py

Needs torch and transformers (with gguf) and the model from tools/get_smollm2.sh.
"""
import torch, json, time
from transformers import AutoModelForCausalLM, AutoTokenizer
p='/root/.cache/sigmatune/models/'
m=AutoModelForCausalLM.from_pretrained(p, gguf_file='SmolLM2-135M-Instruct.Q4_1.gguf', torch_dtype=torch.float32)
tok=AutoTokenizer.from_pretrained(p, gguf_file='SmolLM2-135M-Instruct.Q4_1.gguf')
lines=[json.loads(l) for l in open('/work/main/examples/data/arith-train.jsonl')][:8]
texts=[tok.apply_chat_template(l['messages'], tokenize=False) for l in lines]
def loss():
    tot=0
    for t in texts:
        ids=tok(t, return_tensors='pt').input_ids
        with torch.no_grad(): tot+=m(ids, labels=ids).loss.item()
    return tot/len(texts)
print('original', loss())
r=16
names=['q_proj','k_proj','v_proj','o_proj','gate_proj','up_proj','down_proj']
with torch.no_grad():
  for mod_name, mod in m.named_modules():
    if mod_name.split('.')[-1] in names:
        W=mod.weight.data
        U,S,Vh=torch.linalg.svd(W, full_matrices=False)
        k=S.numel()
        mod.weight.data = (U[:,:k-r]*S[:k-r])@Vh[:k-r]
print('kasa-truncated', loss())
