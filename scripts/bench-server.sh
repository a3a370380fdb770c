#!/usr/bin/env bash
# Server benchmark (not a test): aggregate generated tokens/s at 1, 4 and 8 concurrent streams, and the
# time to first token of a chat's second turn with a ~1,000-token history against a cold prompt, for
# gemma-server and for llama-server (-np 8) in the same run, one after the other on the same machine.
#
#   scripts/bench-server.sh [MODEL.gguf]        (default: the cached Gemma 3 270M Q4_K_M)
#
# Env: THREADS (default 2), REQUESTS per stream (2), MAX_TOKENS per request (64), LLAMA_SERVER (the built
# llama-server), OUT (a folder for the JSON results; default a temporary one).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-$HOME/.cache/gemma-rs/models/gemma-3-270m-q4_k_m.gguf}
THREADS=${THREADS:-2}
REQUESTS=${REQUESTS:-2}
MAX_TOKENS=${MAX_TOKENS:-64}
LLAMA_SERVER=${LLAMA_SERVER:-$HOME/.cache/gemma-anchors/llama.cpp/build/bin/llama-server}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
TARGET=${CARGO_TARGET_DIR:-target}

cargo build -q --release -p gemma-server --bin gemma-server --example bench_load
GEMMA_SERVER=$TARGET/release/gemma-server
LOAD=$TARGET/release/examples/bench_load

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_healthy() {
  for _ in $(seq 1 240); do
    if curl -fsS "http://127.0.0.1:$1/health" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "the server on port $1 did not become healthy" >&2; return 1
}
run_one() { # name port command...
  local name=$1 port=$2; shift 2
  "$@" >"$OUT/$name.log" 2>&1 &
  local pid=$!
  wait_healthy "$port"
  "$LOAD" --url "http://127.0.0.1:$port" --streams 1,4,8 --requests "$REQUESTS" --max-tokens "$MAX_TOKENS" \
    >"$OUT/$name.json"
  kill -TERM "$pid"; wait "$pid" || true
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load: $(cut -d' ' -f1-3 /proc/loadavg)"
P=$(free_port)
run_one gemma-server "$P" "$GEMMA_SERVER" --model "$MODEL" --port "$P" --parallel 8 --ctx 8192 --threads "$THREADS"
P=$(free_port)
run_one llama-server "$P" "$LLAMA_SERVER" -m "$MODEL" -np 8 -c 8192 -t "$THREADS" --port "$P"

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
res = {n: json.load(open(f"{out}/{n}.json")) for n in ("gemma-server", "llama-server")}
print("| server | 1 stream tok/s | 4 streams tok/s | 8 streams tok/s | 8 vs 1 | cold TTFT s | warm TTFT s | warm/cold |")
print("|---|---|---|---|---|---|---|---|")
for name, r in res.items():
    tps = {t["streams"]: t["tokens_per_second"] for t in r["throughput"]}
    reuse = r["prefix_reuse"][-1]
    print(f"| {name} | {tps[1]:.1f} | {tps[4]:.1f} | {tps[8]:.1f} | {tps[8] / tps[1]:.2f}x | "
          f"{reuse['cold_ttft_s']:.3f} | {reuse['warm_ttft_s']:.3f} | {reuse['ratio']:.2f} |")
g, l = res["gemma-server"], res["llama-server"]
for s in (1, 4, 8):
    a = next(t for t in g["throughput"] if t["streams"] == s)["tokens_per_second"]
    b = next(t for t in l["throughput"] if t["streams"] == s)["tokens_per_second"]
    print(f"gemma-server / llama-server at {s} streams: {a / b:.2f}")
print("history tokens:", g["prefix_reuse"][-1]["history_tokens"], "(gemma-server)",
      l["prefix_reuse"][-1]["history_tokens"], "(llama-server)")
print("raw results in", out)
PY
