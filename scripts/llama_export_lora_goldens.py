#!/usr/bin/env python3
"""Records what llama.cpp's `llama-export-lora` writes, for `gemma-core/tests/export_lora_parity.rs`.

Each job merges deterministic LoRA adapters (the rule of `scripts/llama_lora_goldens.py`, written by gguf-py;
`gemma_core::lora::synthetic` writes the same bytes) into a base model and records the sha256 of the whole
output and, per tensor, its name, GGML type, shape and the sha256 of its data. The adapters' values are small
integers times powers of two, so every product B·A is exact in f32 whatever order a kernel sums it in: the
merged bytes do not depend on the CPU, and gemma-rs must write the same ones.

    pip install gguf numpy
    LLAMA_BIN=~/.cache/gemma-anchors/llama.cpp/build/bin \\
        python3 scripts/llama_export_lora_goldens.py testdata/goldens/llama_export_lora.json

Jobs (models from $GEMMA_MODELS, default ~/.cache/gemma-rs/models):
  gemma_lora        Gemma 3 270M (Q4_K_M: merged matrices become F16) + the Gemma adapter (attn_q, attn_v,
                    ffn_down of every layer), scale 1
  gemma_two_scaled  the same base + two adapters (seeds 0x10AA and 0x20BB) at scales 0.5 and 0.75
  gemma_embd_lora   the same base + an adapter of the token embedding alone (a lookup: its factors swap roles)
  gemma_f32_lora    the base requantized to F32 by llama-quantize (merged matrices stay F32) + the Gemma adapter
  smollm2_lora      SmolLM2 135M (llama, Q4_1) + the SmolLM2 adapter (attn_k, attn_output, ffn_gate, ffn_up)
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_lora_goldens as lora  # noqa: E402
from llama_quantize_goldens import tensor_table, write_jobs  # noqa: E402

GEMMA = "gemma-3-270m-q4_k_m.gguf"
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
FIRST_SEED = 0x10AA
SECOND_SEED = 0x20BB
GEMMA_VOCAB, GEMMA_DIM = 262144, 640


def write_adapter(path, kind, seed):
    lora.ARCH, lora.N_LAYERS, lora.TARGETS = lora.MODELS[kind]
    lora.SEED = seed
    lora.write_adapter(path)


def write_embedding_adapter(path, seed):
    """An adapter of token_embd.weight alone: lora_a GGUF dims [rank, n_vocab], lora_b [rank, d_model]."""
    lora.SEED = seed
    w = gguf.GGUFWriter(path, "gemma3")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, lora.ALPHA)
    a = lora.values(0, GEMMA_VOCAB * lora.RANK, lora.A_SHIFT).reshape(GEMMA_VOCAB, lora.RANK)
    b = lora.values(1, GEMMA_DIM * lora.RANK, lora.B_SHIFT).reshape(GEMMA_DIM, lora.RANK)
    w.add_tensor("token_embd.weight.lora_a", a)
    w.add_tensor("token_embd.weight.lora_b", b)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    bin_dir = os.path.expanduser(os.environ.get("LLAMA_BIN", "~/.cache/gemma-anchors/llama.cpp/build/bin"))
    models = os.path.expanduser(os.environ.get("GEMMA_MODELS", "~/.cache/gemma-rs/models"))
    env = dict(os.environ, LD_LIBRARY_PATH=bin_dir)
    results = {}
    version = None
    with tempfile.TemporaryDirectory() as tmp:
        adapters = {
            "gemma": (lambda p: write_adapter(p, "gemma3", FIRST_SEED)),
            "gemma_second": (lambda p: write_adapter(p, "gemma3", SECOND_SEED)),
            "gemma_embd": (lambda p: write_embedding_adapter(p, FIRST_SEED)),
            "smollm2": (lambda p: write_adapter(p, "smollm2", FIRST_SEED)),
        }
        paths = {}
        for name, write in adapters.items():
            paths[name] = os.path.join(tmp, f"{name}.gguf")
            write(paths[name])
        f32_base = os.path.join(tmp, "gemma-f32.gguf")
        subprocess.run([os.path.join(bin_dir, "llama-quantize"), "--allow-requantize", os.path.join(models, GEMMA),
                        f32_base, "F32", "2"], env=env, check=True, capture_output=True)
        jobs = [
            ("gemma_lora", GEMMA, [("gemma", 1.0)]),
            ("gemma_two_scaled", GEMMA, [("gemma", 0.5), ("gemma_second", 0.75)]),
            ("gemma_embd_lora", GEMMA, [("gemma_embd", 1.0)]),
            ("gemma_f32_lora", {"quantized": GEMMA, "type": "F32"}, [("gemma", 1.0)]),
            ("smollm2_lora", SMOLLM2, [("smollm2", 1.0)]),
        ]
        for name, base, used in jobs:
            base_path = f32_base if isinstance(base, dict) else os.path.join(models, base)
            out = os.path.join(tmp, f"{name}.gguf")
            cmd = [os.path.join(bin_dir, "llama-export-lora"), "-m", base_path, "-o", out, "-t", "2",
                   "--lora-scaled", ",".join(f"{paths[a]}:{s}" for a, s in used)]
            run = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed:\n{run.stdout}\n{run.stderr}")
            if version is None:
                version = next((l for l in (run.stdout + run.stderr).splitlines() if "commit" in l), "unknown")
            tensors, keys = tensor_table(out)
            results[name] = {
                "base": base,
                "adapters": [{"adapter": a, "sha256": sha256(paths[a]), "scale": s} for a, s in used],
                "file_sha256": sha256(out), "file_size": os.path.getsize(out), "metadata_keys": keys,
                "tensors": tensors,
            }
            print(f"{name}: {os.path.getsize(out)} bytes, {results[name]['file_sha256'][:16]}", file=sys.stderr)
            os.remove(out)
    write_jobs(sys.argv[1], [f' "llama_cpp": {json.dumps(version.strip())},'], results)


if __name__ == "__main__":
    main()
