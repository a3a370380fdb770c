#!/usr/bin/env python3
"""Decode speed with and without self-speculative decoding (n-gram drafts), gemma-rs beside llama.cpp's
llama-server with the same --spec-type, in one run on one machine (docs/speculative.md, docs/PERFORMANCE.md).

Both engines get the same prompt token ids (from `gemma tokenize`), the same sampling and the same thread
count. gemma-rs: `gemma run --json` (decode_tok_s: tokens after the first over the decode time; draft_n,
draft_n_accepted). llama.cpp: one llama-server per --spec-type, POST /completion, `timings`
(predicted_per_second, draft_n, draft_n_accepted). Each figure is the median of REPS runs, the two engines
interleaved.

Usage: scripts/bench-speculative.sh [threads] [reps] [n_predict]
"""

import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

GEMMA = sys.argv[1]
MODEL = sys.argv[2]
LLAMA_BIN = sys.argv[3]
THREADS = int(sys.argv[4]) if len(sys.argv) > 4 else 2
REPS = int(sys.argv[5]) if len(sys.argv) > 5 else 3
N_PREDICT = int(sys.argv[6]) if len(sys.argv) > 6 else 256
PORT = 18431

REPEAT_PROMPT = (
    "<start_of_turn>user\nRepeat the following text exactly, word for word:\n\nThe quick brown fox jumps over the "
    "lazy dog. Rust is a systems programming language that runs blazingly fast, prevents segfaults, and guarantees "
    "thread safety. It accomplishes these goals by being memory safe without using garbage collection. The borrow "
    "checker validates references at compile time, so whole classes of bugs never reach production.<end_of_turn>\n"
    "<start_of_turn>model\n"
)
# Tasks: (name, prompt, sampling). Greedy Gemma 3 270M quotes and then loops on the first (drafts accepted);
# seeded sampling at temperature 0.8 seldom repeats itself (few or no drafts: the cost of trying).
TASKS = [
    ("repetitive (quote, greedy)", REPEAT_PROMPT, {"temperature": 0.0}),
    ("non-repetitive (story, T=0.8 seed 42)", "Once upon a time, in a small village by the sea,",
     {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": 42}),
]
SPEC_TYPES = ["none", "ngram-simple", "ngram-mod"]


def tokenize(prompt):
    out = subprocess.run([GEMMA, "tokenize", "-m", MODEL, prompt], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def gemma_run(ids_prompt, sampling, spec):
    args = [GEMMA, "run", "-m", MODEL, "--threads", str(THREADS), "--json", "-n", str(N_PREDICT), "--ctx", "2048",
            "--prompt", ids_prompt, "--spec-type", spec]
    if sampling["temperature"] == 0.0:
        args += ["--temperature", "0"]
    else:
        args += ["--temperature", str(sampling["temperature"]), "--top-k", str(sampling["top_k"]),
                 "--top-p", str(sampling["top_p"]), "--seed", str(sampling["seed"])]
    out = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
    return out["decode_tok_s"], out.get("draft_n", 0), out.get("draft_n_accepted", 0), len(out["gen_ids"])


def start_llama(spec):
    env = dict(os.environ, LD_LIBRARY_PATH=LLAMA_BIN)
    proc = subprocess.Popen(
        [f"{LLAMA_BIN}/llama-server", "-m", MODEL, "-t", str(THREADS), "-tb", str(THREADS), "-c", "2048",
         "-np", "1", "--port", str(PORT), "--spec-type", spec, "--no-webui"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except Exception:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"llama-server --spec-type {spec} did not start")


def llama_run(ids, sampling):
    body = {"prompt": ids, "n_predict": N_PREDICT, "cache_prompt": False, "min_p": 0.0, "top_k": 1,
            "ignore_eos": False}
    body.update(sampling)
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}/completion", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.loads(r.read())
    t = out["timings"]
    return t["predicted_per_second"], t.get("draft_n", 0), t.get("draft_n_accepted", 0), t["predicted_n"]


def main():
    prompts = {name: tokenize(prompt) for name, prompt, _ in TASKS}
    results = {}
    for spec in SPEC_TYPES:
        server = start_llama(spec)
        try:
            for name, prompt, sampling in TASKS:
                g, l = [], []
                for _ in range(REPS):
                    l.append(llama_run(prompts[name], sampling))
                    g.append(gemma_run(prompt, sampling, spec))
                results[(name, spec)] = (g, l)
        finally:
            server.terminate()
            server.wait()

    print(f"threads {THREADS}, {N_PREDICT} tokens, median of {REPS}; tok/s (speed-up over none); "
          f"accepted/drafted tokens")
    print("| task | --spec-type | gemma-rs tok/s | llama.cpp tok/s | gemma-rs / llama.cpp | gemma-rs accepted | "
          "llama.cpp accepted |")
    print("|---|---|---|---|---|---|---|")
    for name, _, _ in TASKS:
        base_g = statistics.median(r[0] for r in results[(name, "none")][0])
        base_l = statistics.median(r[0] for r in results[(name, "none")][1])
        for spec in SPEC_TYPES:
            g, l = results[(name, spec)]
            tg, tl = statistics.median(r[0] for r in g), statistics.median(r[0] for r in l)
            acc = lambda rs: f"{rs[0][2]}/{rs[0][1]} ({100.0 * rs[0][2] / rs[0][1]:.0f}%)" if rs[0][1] else "0/0"
            print(f"| {name} | {spec} | {tg:.1f} ({tg / base_g:.2f}x) | {tl:.1f} ({tl / base_l:.2f}x) | "
                  f"{tg / tl:.2f} | {acc(g)} | {acc(l)} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
