#!/usr/bin/env bash
# Wall time of `gemma quantize` against llama.cpp's `llama-quantize`, same jobs, same thread count, alternating
# (gemma, llama, gemma, llama, ...) so both see the same machine state. Each output is checked to be
# byte-identical to the other tool's.
#
#   LLAMA_BIN=~/.cache/gemma-anchors/llama.cpp/build/bin scripts/bench-quantize-vs-llama.sh [RUNS] [THREADS]
set -euo pipefail
RUNS=${1:-3}
THREADS=${2:-2}
LLAMA_BIN=${LLAMA_BIN:-$HOME/.cache/gemma-anchors/llama.cpp/build/bin}
MODELS=${GEMMA_MODELS:-$HOME/.cache/gemma-rs/models}
GEMMA=${GEMMA:-target/release/gemma}
SRC=$MODELS/gemma-3-270m-q4_k_m.gguf
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export LD_LIBRARY_PATH=$LLAMA_BIN

# An unquantized input, the usual case: F32 made from the Q4_K_M file.
"$GEMMA" quantize --allow-requantize "$SRC" "$WORK/f32.gguf" F32 "$THREADS" > /dev/null

seconds() { # command... -> wall seconds
    local start end
    start=$(date +%s.%N)
    "$@" > /dev/null 2>&1
    end=$(date +%s.%N)
    echo "$end - $start" | bc
}

job() { # label input type [options...]
    local label=$1 input=$2 type=$3
    shift 3
    local g=() l=()
    for _ in $(seq "$RUNS"); do
        g+=("$(seconds "$GEMMA" quantize "$@" "$input" "$WORK/gemma.gguf" "$type" "$THREADS")")
        l+=("$(seconds "$LLAMA_BIN/llama-quantize" "$@" "$input" "$WORK/llama.gguf" "$type" "$THREADS")")
    done
    cmp -s "$WORK/gemma.gguf" "$WORK/llama.gguf" && same=identical || same=DIFFERENT
    printf '%-32s gemma %s s   llama %s s   (%s)\n' "$label" "$(printf '%.2f ' "${g[@]}")" \
        "$(printf '%.2f ' "${l[@]}")" "$same"
}

echo "threads: $THREADS, runs: $RUNS, $(nproc) cores"
job "F32 -> Q4_K_M" "$WORK/f32.gguf" Q4_K_M
job "F32 -> Q8_0" "$WORK/f32.gguf" Q8_0
job "F32 -> Q6_K" "$WORK/f32.gguf" Q6_K
job "Q4_K_M -> Q4_K_M (requantize)" "$SRC" Q4_K_M --allow-requantize
job "Q4_K_M -> Q8_0 (requantize)" "$SRC" Q8_0 --allow-requantize
