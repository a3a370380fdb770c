#!/usr/bin/env bash
# EmbeddingGemma 300M, gemma-rs against llama.cpp side by side: the same F32 GGUF (written by `gemma convert`
# from the pulled folder), llama-bench's embedding prompt-processing tests (`-embd 1`, pooling and the Dense
# layers included) against `gemma bench`'s `embd` tests, alternating ROUNDS times because shared hosts drift.
# llama.cpp is built beside the project, never committed: bash ../shared/tools/build-llamacpp.sh
# Usage: scripts/bench-embeddings-vs-llama.sh [rounds] [sizes]
set -euo pipefail
cd "$(dirname "$0")/.."
A=${ANCHORS:-$HOME/.cache/gemma-anchors}
LLAMA_BIN=${LLAMA_BIN:-$A/llama.cpp/build/bin}
ROUNDS=${1:-4}
SIZES=${2:-16,128,512}
cargo build --release -q -p gemma-cli
GEMMA=${CARGO_TARGET_DIR:-target}/release/gemma
FOLDER=$($GEMMA pull embeddinggemma-300m)
GGUF=${TMPDIR:-/tmp}/embeddinggemma-300m-f32.gguf
[ -f "$GGUF" ] || $GEMMA convert -i "$FOLDER" -o "$GGUF" -t f32 >/dev/null
grep -m1 'model name' /proc/cpuinfo
for r in $(seq "$ROUNDS"); do
  echo "== round $r: llama.cpp"
  LD_LIBRARY_PATH="$LLAMA_BIN" "$LLAMA_BIN/llama-bench" -m "$GGUF" -embd 1 -p "$SIZES" -n 0 -t 2 -r 3 -b 2048 -ub 2048 \
    2>/dev/null | grep -E ' pp[0-9]' | awk -F'|' '{print $9 "|" $10}'
  echo "== round $r: gemma-rs"
  $GEMMA bench -m "$GGUF" -p "$SIZES" -t 2 -r 3 | grep embd
done
