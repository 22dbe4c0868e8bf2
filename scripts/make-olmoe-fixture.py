#!/usr/bin/env python3
# Writes tests/fixtures/olmoe-random: a tiny random OlmoeForCausalLM checkpoint (2 layers, hidden 64, 4 heads,
# 8 experts top-2 without renormalisation, expert FFN 32, whole-projection q/k RMSNorm) in BF16 with the
# transformers tensor names, random norm weights (so a q/k norm or router mix-up changes the logits), and the
# byte-level tokenizer of the other fixtures. Used to check moec's OLMoE support against llama.cpp's olmoe
# (scripts/check-gguf-llamacpp.sh). Deterministic (seed 12). Needs numpy.
import json, os, shutil, struct, sys
import numpy as np

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out = os.path.join(root, "tests/fixtures/olmoe-random")
os.makedirs(out, exist_ok=True)
V, d, L, H, E, k, f = 4096, 64, 2, 4, 8, 2, 32
cfg = {"architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "vocab_size": V, "hidden_size": d,
       "intermediate_size": f, "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": H,
       "hidden_act": "silu", "max_position_embeddings": 512, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
       "rope_scaling": None, "attention_bias": False, "attention_dropout": 0.0, "clip_qkv": None,
       "num_experts": E, "num_experts_per_tok": k, "norm_topk_prob": False, "output_router_logits": False,
       "router_aux_loss_coef": 0.01, "tie_word_embeddings": False, "pad_token_id": 4095, "bos_token_id": None,
       "eos_token_id": 4095, "torch_dtype": "bfloat16", "initializer_range": 0.02, "use_cache": True,
       "transformers_version": "4.46.0"}
rng = np.random.default_rng(12)

def mat(rows, cols):
    return rng.uniform(-1, 1, (rows, cols)) * np.sqrt(3.0 / cols)

def norm(n):
    return rng.uniform(0.5, 1.5, n)

T = {"model.embed_tokens.weight": rng.normal(0, 1, (V, d))}
for l in range(L):
    p = f"model.layers.{l}."
    T[p + "input_layernorm.weight"] = norm(d)
    T[p + "post_attention_layernorm.weight"] = norm(d)
    for x in "qkvo":
        T[p + f"self_attn.{x}_proj.weight"] = mat(d, d)
    T[p + "self_attn.q_norm.weight"] = norm(d)
    T[p + "self_attn.k_norm.weight"] = norm(d)
    T[p + "mlp.gate.weight"] = mat(E, d) * 4
    for e in range(E):
        T[p + f"mlp.experts.{e}.gate_proj.weight"] = mat(f, d)
        T[p + f"mlp.experts.{e}.up_proj.weight"] = mat(f, d)
        T[p + f"mlp.experts.{e}.down_proj.weight"] = mat(d, f)
T["model.norm.weight"] = norm(d)
T["lm_head.weight"] = mat(V, d)

def bf16(a):
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    u = u + 0x7FFF + ((u >> 16) & 1)   # round to nearest even
    return (u >> 16).astype(np.uint16).tobytes()

header, blobs, off = {}, [], 0
for name in sorted(T):
    b = bf16(T[name])
    header[name] = {"dtype": "BF16", "shape": list(T[name].shape), "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(os.path.join(out, "model.safetensors"), "wb") as fo:
    fo.write(struct.pack("<Q", len(h)) + h)
    for b in blobs:
        fo.write(b)
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
src = os.path.join(root, "tests/fixtures/qwen3moe-random")
for fn in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(src, fn), os.path.join(out, fn))
print("wrote", out)
