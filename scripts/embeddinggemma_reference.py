#!/usr/bin/env python3
"""Independent float64 NumPy reference of Google's EmbeddingGemma 300M (sentence-transformers layout).

    python3 scripts/embeddinggemma_reference.py MODEL_DIR OUT.json

MODEL_DIR is the Hugging Face folder of google/embeddinggemma-300m: model.safetensors (f32), config.json,
tokenizer.model, 2_Dense/model.safetensors and 3_Dense/model.safetensors. Needs only numpy and sentencepiece
(no torch, no transformers); the safetensors files are parsed here.

This is written from the model's published architecture (Hugging Face transformers' Gemma3TextModel with
`use_bidirectional_attention: true`, then the sentence-transformers modules), not from any other engine's code.
All arithmetic is float64; the f32 weights are widened as they are used, and RoPE angles are exact f64 (HF
computes them in f32), so the output is the model's exact value up to f64 rounding, not any engine's f32 one.

  tokens   SentencePiece ids with BOS (2) first and EOS (1) last (add_bos_token / add_eos_token are true).
  embed    x = embed_tokens[ids] * sqrt(hidden_size).
  layer    h = RMSNorm(x); q, k, v = h Wq^T, h Wk^T, h Wv^T; per-head RMSNorm of q and k; RoPE (rotate_half,
           base 1e6 on full-attention layers, 1e4 on sliding ones, positions 0..n-1); softmax(q k^T * 256^-0.5)
           with 3 query heads sharing the one KV head; o_proj; post_attention_layernorm; x += that.
           x += post_feedforward_layernorm(down(gelu_tanh(gate(h)) * up(h))), h = pre_feedforward_layernorm(x).
           Every RMSNorm is x / sqrt(mean(x^2) + 1e-6) * (1 + w).
  mask     bidirectional. Full-attention layers: every token sees every token. Sliding layers: transformers'
           Gemma3TextConfig turns sliding_window 512 into 512 // 2 + 1 = 257 when bidirectional, and the mask
           is abs(q - k) < 257, i.e. a distance of at most 256 either way (llama.cpp's LLAMA_SWA_TYPE_SYMMETRIC
           with n_swa 512 masks |q - k| > 256: the same set).
  pool     final norm, mean over all tokens (BOS and EOS included), Dense 768->3072 and Dense 3072->768 (no bias,
           identity activation, weights `linear.weight` [out, in]), then L2 normalisation.

The JSON holds, per text: the text, its ids, `pooled` (the mean-pooled 768-vector before the dense layers) and
`embedding` (the final unit vector), both rounded to 7 significant digits.
"""

import json
import math
import struct
import sys
import time

import numpy as np
import sentencepiece as spm

BOS, EOS = 2, 1
SLIDING_WINDOW_N = 47  # sentences in the long text: 651 tokens with BOS/EOS, past the sliding layers' 257


def long_text(n=SLIDING_WINDOW_N):
    return " ".join(f"The quick brown fox jumps over the lazy dog number {i}." for i in range(1, n + 1))


TEXTS = [
    "hello world",
    "task: search result | query: What is the capital of France?",
    "title: none | text: Paris is the capital and most populous city of France.",
    "title: none | text: The mitochondria is the powerhouse of the cell.",
    "task: sentence similarity | query: A man is playing a guitar.",
    "Der schnelle braune Fuchs springt über den faulen Hund. 日本語のテキストも含まれています。 🚀✨",
    long_text(),
    "",
]


def load_safetensors(path):
    """{name: read-only float32 array} viewed straight from the file (8-byte LE header size, JSON header, data)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "F32", (name, meta["dtype"])
        begin, end = meta["data_offsets"]
        tensors[name] = raw[begin:end].view("<f4").reshape(meta["shape"])
    return tensors


class EmbeddingGemma:
    def __init__(self, model_dir):
        self.cfg = json.load(open(f"{model_dir}/config.json"))
        self.w = load_safetensors(f"{model_dir}/model.safetensors")
        self.dense2 = load_safetensors(f"{model_dir}/2_Dense/model.safetensors")["linear.weight"]
        self.dense3 = load_safetensors(f"{model_dir}/3_Dense/model.safetensors")["linear.weight"]
        self.sp = spm.SentencePieceProcessor(model_file=f"{model_dir}/tokenizer.model")
        c = self.cfg
        assert c["use_bidirectional_attention"] and c["attn_logit_softcapping"] is None
        assert c["hidden_activation"] == "gelu_pytorch_tanh"
        self.eps = c["rms_norm_eps"]
        self.head_dim = c["head_dim"]
        self.n_heads, self.n_kv = c["num_attention_heads"], c["num_key_value_heads"]
        self.scaling = c["query_pre_attn_scalar"] ** -0.5
        self.window = c["sliding_window"] // 2 + 1  # transformers' bidirectional adjustment: 512 -> 257

    def tokenize(self, text):
        return [BOS] + self.sp.encode(text) + [EOS]

    def p(self, name):
        return np.asarray(self.w[name], dtype=np.float64)

    def rms_norm(self, x, name):
        x = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return x * (1.0 + self.p(name))

    def rope(self, x, base):
        """x: [n, heads, head_dim]; rotate_half form: pairs (i, i + head_dim/2) share frequency i."""
        n, d = x.shape[0], self.head_dim
        inv_freq = 1.0 / base ** (np.arange(0, d, 2, dtype=np.float64) / d)
        angles = np.arange(n, dtype=np.float64)[:, None] * inv_freq[None, :]  # [n, d/2]
        cos = np.concatenate([np.cos(angles)] * 2, axis=-1)[:, None, :]
        sin = np.concatenate([np.sin(angles)] * 2, axis=-1)[:, None, :]
        rotated = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
        return x * cos + rotated * sin

    def attention(self, h, i, sliding):
        pre, n, hd = f"layers.{i}.self_attn.", h.shape[0], self.head_dim
        q = (h @ self.p(pre + "q_proj.weight").T).reshape(n, self.n_heads, hd)
        k = (h @ self.p(pre + "k_proj.weight").T).reshape(n, self.n_kv, hd)
        v = (h @ self.p(pre + "v_proj.weight").T).reshape(n, self.n_kv, hd)
        q, k = self.rms_norm(q, pre + "q_norm.weight"), self.rms_norm(k, pre + "k_norm.weight")
        base = self.cfg["rope_local_base_freq"] if sliding else self.cfg["rope_theta"]
        q, k = self.rope(q, base), self.rope(k, base)
        pos = np.arange(n)
        allowed = np.abs(pos[:, None] - pos[None, :]) < self.window if sliding else np.ones((n, n), bool)
        group = self.n_heads // self.n_kv
        out = np.empty((n, self.n_heads, hd))
        for hh in range(self.n_heads):
            kv = hh // group
            scores = (q[:, hh, :] @ k[:, kv, :].T) * self.scaling  # [n_q, n_k]
            scores = np.where(allowed, scores, -np.inf)
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            out[:, hh, :] = probs @ v[:, kv, :]
        return out.reshape(n, self.n_heads * hd) @ self.p(pre + "o_proj.weight").T

    def mlp(self, h, i):
        pre = f"layers.{i}.mlp."
        gate = h @ self.p(pre + "gate_proj.weight").T
        up = h @ self.p(pre + "up_proj.weight").T
        gelu = 0.5 * gate * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (gate + 0.044715 * gate**3)))
        return (gelu * up) @ self.p(pre + "down_proj.weight").T

    def hidden_states(self, ids):
        """Final-normed last hidden states [n, hidden]."""
        x = np.asarray(self.w["embed_tokens.weight"][ids], dtype=np.float64) * math.sqrt(self.cfg["hidden_size"])
        for i, layer_type in enumerate(self.cfg["layer_types"]):
            pre = f"layers.{i}."
            sliding = layer_type == "sliding_attention"
            a = self.attention(self.rms_norm(x, pre + "input_layernorm.weight"), i, sliding)
            x = x + self.rms_norm(a, pre + "post_attention_layernorm.weight")
            m = self.mlp(self.rms_norm(x, pre + "pre_feedforward_layernorm.weight"), i)
            x = x + self.rms_norm(m, pre + "post_feedforward_layernorm.weight")
        return self.rms_norm(x, "norm.weight")

    def embed(self, ids):
        """(pooled [768] before the dense layers, unit embedding [768])."""
        pooled = self.hidden_states(ids).mean(axis=0)
        y = np.asarray(self.dense2, dtype=np.float64) @ pooled
        y = np.asarray(self.dense3, dtype=np.float64) @ y
        return pooled, y / max(np.linalg.norm(y), 1e-12)


def sig7(v):
    return [float(f"{x:.7g}") for x in v]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    model_dir, out_path = sys.argv[1], sys.argv[2]
    model = EmbeddingGemma(model_dir)
    records, embeddings = [], []
    for text in TEXTS:
        ids = model.tokenize(text)
        t0 = time.time()
        pooled, emb = model.embed(ids)
        print(f"{len(ids):4d} tokens  {time.time() - t0:6.2f} s  {text[:60]!r}", file=sys.stderr)
        records.append({"text": text, "ids": ids, "pooled": sig7(pooled), "embedding": sig7(emb)})
        embeddings.append(emb)
    assert 600 <= len(records[6]["ids"]) <= 700, len(records[6]["ids"])
    sims = np.array(embeddings) @ np.array(embeddings).T
    print(f"cos(query France, Paris doc) = {sims[1, 2]:.6f}, cos(query France, mitochondria doc) = {sims[1, 3]:.6f}",
          file=sys.stderr)
    out = {
        "model": "embeddinggemma-300m",
        "source": "google/embeddinggemma-300m (sentence-transformers), f32 safetensors",
        "generator": "scripts/embeddinggemma_reference.py (independent float64 NumPy reference)",
        "note": "ids include BOS (2) and EOS (1); pooled = mean over all tokens of the final-normed hidden states, "
                "before the 768->3072->768 dense layers; embedding = L2-normalised output; 7 significant digits. "
                "Sliding layers attend to |q - k| <= 256 (bidirectional window 512 // 2 + 1 = 257, exclusive).",
        "long_text_construction": f"' '.join(f'The quick brown fox jumps over the lazy dog number {{i}}.' "
                                  f"for i in range(1, {SLIDING_WINDOW_N + 1}))",
        "texts": records,
    }
    with open(out_path, "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
