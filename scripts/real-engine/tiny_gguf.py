#!/usr/bin/env python3
"""Writes a tiny llama-architecture GGUF model with random weights (no download): a 2-layer,
64-wide transformer and a small SentencePiece-style vocabulary (special tokens, the 256 byte
tokens, a few words). It generates nonsense, but through the real inference engine: real
tokenizer, real sampling, real HTTP streaming. Usage: tiny_gguf.py OUT.gguf"""
import sys

import numpy as np
import gguf

out = sys.argv[1]
rng = np.random.default_rng(7)
n_embd, n_ff, n_layer, n_head, n_ctx = 64, 128, 2, 4, 512

tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
for b in range(256):
    tokens.append(f"<0x{b:02X}>")
    scores.append(0.0)
    types.append(6)  # byte
words = "the a of to and in is it you that he was for on are with as I his they be at one have this from".split()
for i, w in enumerate(dict.fromkeys(words + list("abcdefghijklmnopqrstuvwxyz"))):  # unique
    tokens.append("\u2581" + w)
    scores.append(-float(i))
    types.append(1)
n_vocab = len(tokens)

w = gguf.GGUFWriter(out, "llama")
w.add_name("citadel-tiny-random")
w.add_context_length(n_ctx)
w.add_embedding_length(n_embd)
w.add_block_count(n_layer)
w.add_feed_forward_length(n_ff)
w.add_head_count(n_head)
w.add_head_count_kv(n_head)
w.add_layer_norm_rms_eps(1e-5)
w.add_rope_dimension_count(n_embd // n_head)
w.add_file_type(0)  # all F32
w.add_tokenizer_model("llama")
w.add_token_list(tokens)
w.add_token_scores(scores)
w.add_token_types(types)
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_unk_token_id(0)
w.add_chat_template(
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
)


def t(name, *shape):
    w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))


t("token_embd.weight", n_vocab, n_embd)
for i in range(n_layer):
    w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
    for m in ("q", "k", "v", "output"):
        t(f"blk.{i}.attn_{m}.weight", n_embd, n_embd)
    w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
    t(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
    t(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
    t(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
t("output.weight", n_vocab, n_embd)

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(f"wrote {out}: {n_vocab} tokens, {n_layer} layers, {n_embd} wide")
