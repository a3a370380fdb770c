#!/usr/bin/env python3
"""Decode speed with and without a draft model (speculative decoding, `--spec-draft-model`), gemma-rs beside
llama.cpp's llama-server with the same target, draft and draft length, in one run on one machine
(docs/speculative.md).

The only Gemma weights here are Gemma 3 270M's, so the target is that model in F32 (1 GB read per token: the
slow model a draft helps) and the draft is the Q4_K_M file the project pulls (the same weights, 4x fewer bytes).
Both engines get the same prompt ids, greedy sampling and thread count. gemma-rs: `gemma run --json`
(decode_tok_s; draft_n, draft_n_accepted); llama.cpp: llama-server, POST /completion, `timings`. Each figure is
the median of REPS runs, the engines interleaved.

    python3 scripts/bench_draft_model.py GEMMA LLAMA_BIN [threads] [reps] [n_predict]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

GEMMA, LLAMA_BIN = sys.argv[1], sys.argv[2]
THREADS = int(sys.argv[3]) if len(sys.argv) > 3 else 2
REPS = int(sys.argv[4]) if len(sys.argv) > 4 else 3
N_PREDICT = int(sys.argv[5]) if len(sys.argv) > 5 else 128
PORT = 18433
PROMPTS = [
    ("story", "Once upon a time, in a small village by the sea,"),
    ("explain", "<start_of_turn>user\nExplain how a lighthouse works.<end_of_turn>\n<start_of_turn>model\n"),
]
DRAFT_N_MAX = [0, 3, 8]  # 0: no draft model


def gemma_run(target, draft, prompt, n_max):
    args = [GEMMA, "run", "-m", target, "--threads", str(THREADS), "--json", "-n", str(N_PREDICT),
            "--ctx", "2048", "--temperature", "0", "--prompt", prompt]
    if n_max:
        args += ["--spec-draft-model", draft, "--spec-draft-n-max", str(n_max)]
    out = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
    return out["decode_tok_s"], out.get("draft_n", 0), out.get("draft_n_accepted", 0), out["gen_ids"]


def start_llama(target, draft, n_max):
    env = dict(os.environ, LD_LIBRARY_PATH=LLAMA_BIN)
    args = [f"{LLAMA_BIN}/llama-server", "-m", target, "-t", str(THREADS), "-tb", str(THREADS), "-c", "2048",
            "-np", "1", "--port", str(PORT), "--no-webui"]
    if n_max:
        # llama.cpp 0c1e570 loads a draft model but drafts with it only when the type is named.
        args += ["--spec-type", "draft-simple", "--spec-draft-model", draft, "--spec-draft-n-max", str(n_max),
                 "--spec-draft-threads", str(THREADS)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except Exception:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"llama-server with draft n_max {n_max} did not start")


def llama_run(ids):
    body = {"prompt": ids, "n_predict": N_PREDICT, "cache_prompt": False, "temperature": 0.0, "top_k": 1}
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}/completion", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=900) as r:
        out = json.loads(r.read())
    t = out["timings"]
    return t["predicted_per_second"], t.get("draft_n", 0), t.get("draft_n_accepted", 0), out["tokens"]


def main():
    draft = subprocess.run([GEMMA, "pull"], check=True, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        target = os.path.join(tmp, "gemma-3-270m-f32.gguf")
        subprocess.run([GEMMA, "quantize", "--allow-requantize", draft, target, "F32", str(THREADS)], check=True,
                       capture_output=True)
        ids = {name: json.loads(subprocess.run([GEMMA, "tokenize", "-m", target, p], check=True,
                                               capture_output=True, text=True).stdout) for name, p in PROMPTS}
        results = {}
        for n_max in DRAFT_N_MAX:
            server = start_llama(target, draft, n_max)
            try:
                for name, prompt in PROMPTS:
                    g, l = [], []
                    for _ in range(REPS):
                        l.append(llama_run(ids[name]))
                        g.append(gemma_run(target, draft, prompt, n_max))
                    results[(name, n_max)] = (g, l)
            finally:
                server.terminate()
                server.wait()
    print(f"target Gemma 3 270M F32, draft its Q4_K_M; threads {THREADS}, {N_PREDICT} tokens greedy, median of "
          f"{REPS}; tok/s (speed-up over no draft); accepted/drafted tokens")
    print("| prompt | draft n-max | gemma-rs tok/s | llama.cpp tok/s | gemma-rs / llama.cpp | gemma-rs accepted | "
          "llama.cpp accepted | same tokens as without |")
    print("|---|---|---|---|---|---|---|---|")
    for name, _ in PROMPTS:
        base_g = statistics.median(r[0] for r in results[(name, 0)][0])
        base_l = statistics.median(r[0] for r in results[(name, 0)][1])
        for n_max in DRAFT_N_MAX:
            g, l = results[(name, n_max)]
            tg, tl = statistics.median(r[0] for r in g), statistics.median(r[0] for r in l)
            acc = lambda rs: f"{rs[0][2]}/{rs[0][1]}" if rs[0][1] else "-"
            same = g[0][3] == results[(name, 0)][0][0][3]
            label = n_max if n_max else "none"
            print(f"| {name} | {label} | {tg:.1f} ({tg / base_g:.2f}x) | {tl:.1f} ({tl / base_l:.2f}x) | "
                  f"{tg / tl:.2f} | {acc(g)} | {acc(l)} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
