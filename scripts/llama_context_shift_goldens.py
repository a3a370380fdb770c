#!/usr/bin/env python3
"""Records llama.cpp's greedy generation past the end of the context with context shift on, for
`gemma-core/tests/context_shift.rs` and gemma-server's tests.

llama.cpp shifts Gemma 3's context only when its sliding-window layers keep every position (`--swa-full`;
without it llama-server turns `--context-shift` off for this model). When a sequence's cache holds
`n_ctx - 1` tokens and one more must go in, it drops `n_discard = (n_cached - n_keep) / 2` tokens after the
first `n_keep` (BOS counted) and moves the rest back, rotating their keys by `-n_discard` positions.

It starts llama-server (built beside the project by `/work/shared/tools/build-llamacpp.sh`, never committed)
on loopback with Gemma 3 270M, one slot, a small context:

    python3 scripts/llama_context_shift_goldens.py \
        [--llama-dir ~/.cache/gemma-anchors/llama.cpp] [--models-dir ~/.cache/gemma-rs/models] \
        [--out testdata/goldens/gemma3_270m_llama_context_shift.json]

For each case: the prompt ids (BOS added), `n_keep` as sent (llama-server adds BOS), the greedy tokens, and at
each step the margin log p1 - log p2 of the raw logits there (llama-server's `n_probs`), so a test knows where
a near-tie leaves two engines free to differ. The run without context shift shows where generation would stop.
"""
import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import urllib.request

GEMMA = "gemma-3-270m-q4_k_m.gguf"
HERE = os.path.dirname(os.path.abspath(__file__))
CTX = 256
N_PREDICT = 640

NEUTRAL = {
    "temperature": 0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "repeat_penalty": 1.0,
    "cache_prompt": False,
    "n_probs": 2,
    "return_tokens": True,
}

CASES = [
    {"prompt": "Write a long story about a lighthouse keeper who finds a message in a bottle.", "n_keep": 0},
    {"prompt": "Write a long story about a lighthouse keeper who finds a message in a bottle.", "n_keep": 12},
    {"prompt": "List the countries of Europe and their capitals, one per line:", "n_keep": -1},
]


def chat_goldens_module():
    spec = importlib.util.spec_from_file_location("chat_goldens", os.path.join(HERE, "llama_chat_template_goldens.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def margin(step):
    top = step["top_logprobs"] if "top_logprobs" in step else step["top_probs"]
    lp = [t["logprob"] if "logprob" in t else math.log(t["prob"]) for t in top]
    return round(lp[0] - lp[1], 4)


def record(server_bin, model_path, port, shift):
    flags = ["--swa-full", "--context-shift"] if shift else ["--swa-full"]
    cmd = [server_bin, "-m", model_path, *flags, "--host", "127.0.0.1", "--port", str(port), "-c", str(CTX),
           "-t", "2", "-np", "1", "-fa", "on", "--no-warmup"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        chat_goldens_module().wait_ready(port, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/props", timeout=60) as r:
            n_ctx = json.load(r)["default_generation_settings"]["n_ctx"]
        assert n_ctx == CTX, f"llama-server's slot holds {n_ctx} tokens, not {CTX}"
        out = []
        for case in CASES:
            ids = post(port, "/tokenize", {"content": case["prompt"], "add_special": True})["tokens"]
            body = dict(NEUTRAL, prompt=ids, n_predict=N_PREDICT, n_keep=case["n_keep"])
            r = post(port, "/completion", body)
            gen = r["tokens"]
            margins = [margin(s) for s in r["completion_probabilities"]]
            ids_top = [s["id"] for s in r["completion_probabilities"]]
            assert ids_top == gen, "n_probs steps are the generated tokens"
            out.append({"prompt": case["prompt"], "prompt_ids": ids, "n_keep": case["n_keep"], "gen_ids": gen,
                        "gen_top1_top2_margin": margins, "stop_type": r.get("stop_type"),
                        "truncated": r.get("truncated")})
            print(f"shift={shift} case {len(out)}: {len(gen)} tokens", file=sys.stderr)
        return out
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-dir", default=os.path.expanduser("~/.cache/gemma-anchors/llama.cpp"))
    ap.add_argument("--models-dir", default=os.path.expanduser("~/.cache/gemma-rs/models"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "testdata", "goldens",
                                                  "gemma3_270m_llama_context_shift.json"))
    ap.add_argument("--port", type=int, default=18093)
    args = ap.parse_args()
    server_bin = os.path.join(args.llama_dir, "build", "bin", "llama-server")
    model_path = os.path.join(args.models_dir, GEMMA)
    shifted = record(server_bin, model_path, args.port, True)
    plain = record(server_bin, model_path, args.port, False)
    for s, p in zip(shifted, plain):
        s["no_shift_gen_ids"] = p["gen_ids"]
    with open(args.out, "w") as f:
        json.dump({"llama_cpp": "vendored in llama-cpp-python 0.3.36", "ctx": CTX, "n_predict": N_PREDICT,
                   "cases": shifted}, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
