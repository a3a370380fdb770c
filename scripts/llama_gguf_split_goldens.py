#!/usr/bin/env python3
"""Records what llama.cpp's `llama-gguf-split` writes, for `gemma-cli/tests/gguf_split.rs`.

For each split job (options) it runs llama-gguf-split on the default model with the output prefix `out` in a
temporary folder and records each part's file name, size and sha256, and what `--dry-run` prints on stdout (the
plan). Then it merges the first job's parts back (`--merge`) and records the merged file's size and sha256, and
whether it equals the original model (it does not: llama-gguf-split keeps `split.no`, `split.tensors.count` and
`split.count = 0` in the merged file). Nothing is left behind.

    cmake --build ~/.cache/gemma-anchors/llama.cpp/build -j2 --target llama-gguf-split
    LLAMA_BIN=~/.cache/gemma-anchors/llama.cpp/build/bin \\
        python3 scripts/llama_gguf_split_goldens.py testdata/goldens/llama_gguf_split.json

The model is read from $GEMMA_MODELS (default ~/.cache/gemma-rs/models).
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

MODEL = "gemma-3-270m-q4_k_m.gguf"

# (name, options)
JOBS = [
    ("tensors_100", ["--split-max-tensors", "100"]),
    ("default_128", []),
    ("size_100M", ["--split-max-size", "100M"]),
    ("no_tensor_first_size_200M", ["--no-tensor-first-split", "--split-max-size", "200M"]),
]
MERGE_FROM = "tensors_100"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_json = sys.argv[1]
    bin_dir = os.path.expanduser(os.environ.get("LLAMA_BIN", "~/.cache/gemma-anchors/llama.cpp/build/bin"))
    tool = os.path.join(bin_dir, "llama-gguf-split")
    env = dict(os.environ, LD_LIBRARY_PATH=bin_dir)
    models = os.path.expanduser(os.environ.get("GEMMA_MODELS", "~/.cache/gemma-rs/models"))
    model = os.path.join(models, MODEL)
    result = {
        "tool": "llama-gguf-split",
        "llama_cpp_commit": subprocess.run(
            ["git", "-C", os.path.dirname(os.path.dirname(bin_dir)), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True).stdout.strip(),
        "model": MODEL,
        "model_sha256": sha256(model),
        "jobs": [],
    }
    for name, options in JOBS:
        with tempfile.TemporaryDirectory() as tmp:
            prefix = os.path.join(tmp, "out")
            dry = subprocess.run([tool, *options, "--dry-run", model, prefix], env=env, capture_output=True,
                                 text=True, check=True)
            subprocess.run([tool, *options, model, prefix], env=env, capture_output=True, check=True)
            parts = [{"file": f, "size": os.path.getsize(os.path.join(tmp, f)), "sha256": sha256(os.path.join(tmp, f))}
                     for f in sorted(os.listdir(tmp))]
            job = {"name": name, "options": options, "dry_run_stdout": dry.stdout, "parts": parts}
            if name == MERGE_FROM:
                merged = os.path.join(tmp, "merged.gguf")
                subprocess.run([tool, "--merge", os.path.join(tmp, parts[0]["file"]), merged], env=env,
                               capture_output=True, check=True)
                digest = sha256(merged)
                job["merged"] = {"size": os.path.getsize(merged), "sha256": digest,
                                 "equals_original": digest == result["model_sha256"]}
            result["jobs"].append(job)
            print(name, len(parts), "parts", file=sys.stderr)
    with open(out_json, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
