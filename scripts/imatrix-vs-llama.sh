#!/usr/bin/env bash
# `gemma imatrix` against llama.cpp's `llama-imatrix` on the default model (Gemma 3 270M Q4_K_M) over
# testdata/perplexity/lighthouses.txt with -c 128 (the run that made testdata/imatrix/):
#  1. wall time of both tools, same threads, alternating;
#  2. llama-quantize accepts our matrix (GGUF and .dat) and writes the same bytes as `gemma quantize` with it;
#  3. what the matrix buys: Q2_K and Q3_K_M made from an F32 file (made from the default model) without a
#     matrix, with llama-imatrix's and with ours; mean KL divergence from the F32 model by `gemma perplexity
#     --kl-divergence` on the first 20 kB of the GPL-3 text (-c 128 --chunks 16; not the text the matrices
#     were made from).
#
#   LLAMA_BIN=~/.cache/gemma-anchors/llama.cpp/build/bin scripts/imatrix-vs-llama.sh [THREADS]
set -euo pipefail
THREADS=${1:-2}
LLAMA_BIN=${LLAMA_BIN:-$HOME/.cache/gemma-anchors/llama.cpp/build/bin}
MODELS=${GEMMA_MODELS:-$HOME/.cache/gemma-rs/models}
GEMMA=${GEMMA:-target/release/gemma}
SRC=$MODELS/gemma-3-270m-q4_k_m.gguf
TEXT=testdata/perplexity/lighthouses.txt
EVAL_TEXT=${EVAL_TEXT:-/usr/share/common-licenses/GPL-3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export LD_LIBRARY_PATH=$LLAMA_BIN

seconds() { # command... -> wall seconds
    local start end
    start=$(date +%s.%N)
    "$@" > /dev/null 2>&1
    end=$(date +%s.%N)
    echo "$end - $start" | bc
}

echo "== imatrix over $TEXT, -c 128, $THREADS threads (wall seconds, alternating)"
g=() l=()
for _ in 1 2 3; do
    g+=("$(seconds "$GEMMA" imatrix -m "$SRC" -f "$TEXT" -c 128 -t "$THREADS" -o "$WORK/ours.gguf")")
    l+=("$(seconds "$LLAMA_BIN/llama-imatrix" -m "$SRC" -f "$TEXT" -c 128 -t "$THREADS" -o "$WORK/llama.gguf")")
done
printf 'gemma imatrix %s s   llama-imatrix %s s\n' "$(printf '%.2f ' "${g[@]}")" "$(printf '%.2f ' "${l[@]}")"
"$GEMMA" imatrix -m "$SRC" -f "$TEXT" -c 128 -t "$THREADS" --no-ppl --output-format dat -o "$WORK/ours.dat" \
    > /dev/null 2>&1

echo "== llama-quantize takes our matrix"
"$GEMMA" quantize --allow-requantize "$SRC" "$WORK/f32.gguf" F32 "$THREADS" > /dev/null
for m in ours.gguf ours.dat; do
    "$LLAMA_BIN/llama-quantize" --imatrix "$WORK/$m" "$WORK/f32.gguf" "$WORK/llama-q.gguf" Q3_K_M "$THREADS" \
        > "$WORK/llama-quantize.log" 2>&1 || { cat "$WORK/llama-quantize.log"; exit 1; }
    grep -q "loaded 126 importance matrix entries" "$WORK/llama-quantize.log" || {
        cat "$WORK/llama-quantize.log"; echo "llama-quantize did not load 126 entries from $m"; exit 1; }
    "$GEMMA" quantize --imatrix "$WORK/$m" "$WORK/f32.gguf" "$WORK/gemma-q.gguf" Q3_K_M "$THREADS" > /dev/null 2>&1
    cmp -s "$WORK/llama-q.gguf" "$WORK/gemma-q.gguf" && same=identical || same=DIFFERENT
    echo "$m: llama-quantize loaded 126 entries; its Q3_K_M and gemma quantize's: $same"
done

echo "== mean KL divergence from the F32 model (first 20 kB of $EVAL_TEXT, -c 128 --chunks 16)"
head -c 20000 "$EVAL_TEXT" > "$WORK/eval.txt"
"$GEMMA" perplexity -m "$WORK/f32.gguf" -f "$WORK/eval.txt" -c 128 --chunks 16 --threads "$THREADS" \
    --kl-divergence-base "$WORK/base.kld" > /dev/null 2>&1
kld() { # model -> "mean ± error, same top %"
    "$GEMMA" perplexity -m "$1" --kl-divergence-base "$WORK/base.kld" --kl-divergence --json --threads "$THREADS" \
        2> /dev/null | python3 -c 'import json,sys; s=json.load(sys.stdin); k=s["kld_mean"]; t=s["same_top"]
print("%.4f ± %.4f, same top %.1f%%" % (k["value"], k["error"], 100*t["value"]))'
}
for type in Q2_K Q3_K_M; do
    "$GEMMA" quantize "$WORK/f32.gguf" "$WORK/none.gguf" "$type" "$THREADS" > /dev/null 2>&1
    "$GEMMA" quantize --imatrix "$WORK/llama.gguf" "$WORK/f32.gguf" "$WORK/llama-imx.gguf" "$type" "$THREADS" > /dev/null 2>&1
    "$GEMMA" quantize --imatrix "$WORK/ours.gguf" "$WORK/f32.gguf" "$WORK/ours-imx.gguf" "$type" "$THREADS" > /dev/null 2>&1
    printf '%-7s without: %s | llama-imatrix: %s | gemma imatrix: %s\n' "$type" "$(kld "$WORK/none.gguf")" \
        "$(kld "$WORK/llama-imx.gguf")" "$(kld "$WORK/ours-imx.gguf")"
done
