#!/usr/bin/env bash
# Decode speed with and without n-gram speculative decoding, gemma-rs beside llama.cpp's llama-server with the
# same --spec-type, in one run (docs/speculative.md). llama.cpp is built beside the project, never committed.
# Usage: scripts/bench-speculative.sh [threads] [repetitions] [tokens]
set -euo pipefail
cd "$(dirname "$0")/.."
A=${ANCHORS:-$HOME/.cache/gemma-anchors}
LLAMA_BIN=${LLAMA_BIN:-$A/llama.cpp/build/bin}
cargo build --release -q -p gemma-cli
GEMMA=${CARGO_TARGET_DIR:-target}/release/gemma
MODEL=$($GEMMA pull gemma-3-270m)
grep -m1 'model name' /proc/cpuinfo
python3 scripts/bench_speculative.py "$GEMMA" "$MODEL" "$LLAMA_BIN" "${1:-2}" "${2:-3}" "${3:-256}"
