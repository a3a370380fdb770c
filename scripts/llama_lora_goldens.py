#!/usr/bin/env python3
"""Writes a deterministic LoRA adapter for Gemma 3 270M and records llama.cpp's greedy text with it, for
`gemma-core/tests/lora_parity.rs` and `gemma-server/tests/lora.rs`.

No LoRA adapter for the model can be downloaded here, so the adapter is made from an integer hash that the
Rust test reproduces bit for bit (`gemma_core::lora::synthetic` documents the same rule):

    x = (SEED * 0x9E3779B1 + t * 0x85EBCA77 + i * 0xC2B2AE3D) mod 2^32   (t: tensor index, i: element index)
    x ^= x >> 16; x = x * 0x7FEB352D mod 2^32; x ^= x >> 15; x = x * 0x846CA68B mod 2^32; x ^= x >> 16
    value = ((x mod 2047) - 1023) * 2^-(10 + shift)       (exact in f16: 11 significant bits at most)

with `shift` A_SHIFT for `lora_a` and B_SHIFT for `lora_b`; tensors are numbered in file order: for each layer,
for each target matrix, its `lora_a` then its `lora_b`. Rank 8, alpha 16 (scale 2 at a user scale of 1). The file
is written by gguf-py (`pip install gguf`, llama.cpp's writer) with the metadata convert_lora_to_gguf.py writes.

Then llama-server (from `~/.cache/gemma-anchors/llama.cpp/build/bin`, never committed) is started on loopback
with `--lora ADAPTER`, and for each prompt and each scale (per-request `lora: [{"id": 0, "scale": s}]`, 0 = the
base model) the script records the greedy continuation and, teacher-forced at each step, the margin between the
best two logits (log p1 - log p2 at temperature 1, no truncation), so the tests know where a near-tie lets two
engines differ:

    LD_LIBRARY_PATH=~/.cache/gemma-anchors/llama.cpp/build/bin \
        python3 scripts/llama_lora_goldens.py ~/.cache/gemma-rs/models/gemma-3-270m-q4_k_m.gguf \
        testdata/goldens/gemma3_270m_llama_lora.json
    LD_LIBRARY_PATH=... python3 scripts/llama_lora_goldens.py \
        ~/.cache/gemma-rs/models/SmolLM2-135M-Instruct.Q4_1.gguf testdata/goldens/smollm2_llama_lora.json smollm2

The goldens committed were made with the llama.cpp at ~/.cache/gemma-anchors/llama.cpp (`llama-server --version`
is recorded in the file).
"""
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import gguf

SEED = 0x10AA
RANK = 8
ALPHA = 16.0
A_SHIFT = 3
B_SHIFT = 7
N_PREDICT = 32
SCALES = [1.0, 0.5, 0.0]
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
]
# Per model: architecture, layers, and the adapted matrices as (name, d_in, d_out). The Llama adapter (SmolLM2
# 135M) takes the matrices the Gemma one leaves out, so the two cover every kind of product between them.
MODELS = {
    "gemma3": ("gemma3", 18, [("attn_q", 640, 1024), ("attn_v", 640, 256), ("ffn_down", 2048, 640)]),
    "smollm2": ("llama", 30, [("attn_k", 576, 192), ("attn_output", 576, 576), ("ffn_gate", 576, 1536),
                              ("ffn_up", 576, 1536)]),
}
ARCH, N_LAYERS, TARGETS = MODELS["gemma3"]
PORT = 18093
M = (1 << 32) - 1


def values(t, n, shift):
    i = np.arange(n, dtype=np.uint64)
    x = (SEED * 0x9E3779B1 + t * 0x85EBCA77 + i * 0xC2B2AE3D) & M
    x ^= x >> np.uint64(16)
    x = (x * 0x7FEB352D) & M
    x ^= x >> np.uint64(15)
    x = (x * 0x846CA68B) & M
    x ^= x >> np.uint64(16)
    k = (x % 2047).astype(np.int64) - 1023
    return (k.astype(np.float64) * 2.0 ** -(10 + shift)).astype(np.float16)


def write_adapter(path):
    w = gguf.GGUFWriter(path, ARCH)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, ALPHA)
    t = 0
    for layer in range(N_LAYERS):
        for name, d_in, d_out in TARGETS:
            a = values(t, RANK * d_in, A_SHIFT).reshape(RANK, d_in)  # GGUF dims [d_in, rank]
            b = values(t + 1, d_out * RANK, B_SHIFT).reshape(d_out, RANK)  # GGUF dims [rank, d_out]
            w.add_tensor(f"blk.{layer}.{name}.weight.lora_a", a)
            w.add_tensor(f"blk.{layer}.{name}.weight.lora_b", b)
            t += 2
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)


def get(path):
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{path}", timeout=300) as r:
        return json.load(r)


NEUTRAL = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0, "seed": 1,
           "cache_prompt": False}


def greedy(ids, scale):
    body = dict(NEUTRAL, prompt=ids, n_predict=N_PREDICT, temperature=0, return_tokens=True,
                lora=[{"id": 0, "scale": scale}])
    return post("/completion", body)["tokens"]


def margin(ids, scale):
    body = dict(NEUTRAL, prompt=ids, n_predict=1, temperature=1.0, n_probs=2, post_sampling_probs=True,
                lora=[{"id": 0, "scale": scale}])
    top = post("/completion", body)["completion_probabilities"][0]["top_probs"]
    return top[0]["id"], math.log(top[0]["prob"]) - math.log(top[1]["prob"])


def main():
    global ARCH, N_LAYERS, TARGETS
    model, out_path = sys.argv[1:3]
    kind = sys.argv[3] if len(sys.argv) > 3 else "gemma3"
    ARCH, N_LAYERS, TARGETS = MODELS[kind]
    bin_dir = os.path.expanduser("~/.cache/gemma-anchors/llama.cpp/build/bin")
    with tempfile.TemporaryDirectory() as tmp:
        adapter = os.path.join(tmp, "lora.gguf")
        write_adapter(adapter)
        with open(adapter, "rb") as f:
            data = f.read()
        sha = hashlib.sha256(data).hexdigest()
        print(f"adapter: {len(data)} bytes, sha256 {sha}", file=sys.stderr)
        server = subprocess.Popen(
            [os.path.join(bin_dir, "llama-server"), "-m", model, "--lora", adapter, "--host", "127.0.0.1",
             "--port", str(PORT), "-t", "2", "-c", "1024", "-fa", "on", "-np", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(120):
                try:
                    if get("/health").get("status") == "ok":
                        break
                except Exception:
                    time.sleep(0.5)
            adapters = get("/lora-adapters")
            cases = []
            for prompt in PROMPTS:
                ids = post("/tokenize", {"content": prompt, "add_special": True})["tokens"]
                runs = []
                for scale in SCALES:
                    gen = greedy(ids, scale)
                    margins = []
                    for i in range(len(gen)):
                        best, m = margin(ids + gen[:i], scale)
                        # Teacher-forced (the whole context in one prefill) and decoded token by token, llama.cpp
                        # rounds differently (its base model too): a different best token is a near-tie, margin 0.
                        if best != gen[i]:
                            print(f"  step {i}: teacher-forced best {best} != greedy {gen[i]} ({m:.4f})",
                                  file=sys.stderr)
                            m = 0.0
                        margins.append(round(m, 4))
                    runs.append({"scale": scale, "gen_ids": gen, "top1_top2_margin": margins})
                    print(f"{prompt!r} scale {scale}: {post('/detokenize', {'tokens': gen})['content']!r}",
                          file=sys.stderr)
                cases.append({"prompt": prompt, "prompt_ids": ids, "runs": runs})
        finally:
            server.terminate()
            server.wait()
    version = subprocess.run([os.path.join(bin_dir, "llama-server"), "--version"], capture_output=True,
                             text=True).stderr.strip().splitlines()[0]
    out = {
        "llama_cpp_version": version,
        "adapter": {"architecture": ARCH, "seed": SEED, "rank": RANK, "alpha": ALPHA, "a_shift": A_SHIFT, "b_shift": B_SHIFT,
                    "targets": [t[0] for t in TARGETS], "n_layers": N_LAYERS, "bytes": len(data), "sha256": sha},
        "llama_server_lora_adapters": [{k: v for k, v in a.items() if k != "path"} for a in adapters],
        "cases": cases,
    }
    with open(out_path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
