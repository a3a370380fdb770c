#!/usr/bin/env bash
# Side-by-side speed of gemma-rs and llama.cpp on the same machine, in one run (machines differ by 2x, so figures
# from different runs never compare). llama.cpp is built beside the project, never committed:
#   bash ../shared/tools/build-llamacpp.sh            # -> ~/.cache/gemma-anchors
# Usage: scripts/bench-vs-llama.sh [threads,..] [repetitions]
set -euo pipefail
cd "$(dirname "$0")/.."
A=${ANCHORS:-$HOME/.cache/gemma-anchors}
LLAMA_BIN=${LLAMA_BIN:-$A/llama.cpp/build/bin}
THREADS=${1:-1,2}
REPS=${2:-5}
cargo build --release -q -p gemma-cli
GEMMA=${CARGO_TARGET_DIR:-target}/release/gemma
MODEL=$($GEMMA pull gemma-3-270m)

echo "== machine"
grep -m1 'model name' /proc/cpuinfo
$GEMMA --print-backend --weights "$MODEL"
echo "== llama.cpp (llama-bench)"
"$LLAMA_BIN/llama-bench" -m "$MODEL" -p 256 -n 64 -t "$THREADS" -r "$REPS" 2>/dev/null | grep -E 'pp|tg|model'
echo "== gemma-rs (gemma bench)"
$GEMMA bench -m "$MODEL" -p 256 -n 64 -t "$THREADS" -r "$REPS"
echo "== peak RSS, 128-token greedy generation, 2 threads"
if [ -x "$LLAMA_BIN/llama-simple" ]; then
  /usr/bin/time -f 'llama.cpp (llama-simple): %M KiB' "$LLAMA_BIN/llama-simple" -m "$MODEL" -n 128 "The capital of France is" >/dev/null 2>/tmp/rss-llama.txt || true
  grep 'KiB' /tmp/rss-llama.txt
fi
/usr/bin/time -f 'gemma-rs (gemma run): %M KiB' $GEMMA run -m "$MODEL" -p "The capital of France is" -n 128 --threads 2 >/dev/null 2>/tmp/rss-gemma.txt
grep 'KiB' /tmp/rss-gemma.txt
