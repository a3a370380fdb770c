#!/usr/bin/env python3
"""Records llama.cpp's greedy text with each KV cache type (`-ctk T -ctv T`), for
`gemma-core/tests/kv_type_parity.rs`.

llama-server (from `~/.cache/gemma-anchors/llama.cpp/build/bin`, never committed) is started on loopback once per
cache type, with flash attention on (llama.cpp needs it for a quantized V cache, and its CPU default picks it),
and for each prompt the script records the greedy continuation and, teacher-forced at each step (the whole
context in one prefill), the margin between the best two logits (log p1 - log p2 at temperature 1, no
truncation), so the test knows where a near-tie lets two engines differ:

    LD_LIBRARY_PATH=~/.cache/gemma-anchors/llama.cpp/build/bin \\
        python3 scripts/llama_kv_type_goldens.py ~/.cache/gemma-rs/models/gemma-3-270m-q4_k_m.gguf \\
        testdata/goldens/gemma3_270m_llama_kv_types.json

The goldens committed were made with the llama.cpp at ~/.cache/gemma-anchors/llama.cpp (`llama-server --version`
is recorded in the file).
"""
import json
import math
import os
import subprocess
import sys
import time
import urllib.request

N_PREDICT = 24
TYPES = ["f16", "q8_0", "q4_0"]
# A long prompt (several hundred tokens) makes the cache's rounding matter; the sliding-window layers (512) wrap.
LONG = " ".join(
    f"Item {i}: the {['red', 'green', 'blue', 'yellow'][i % 4]} box holds {i * 7 % 13} stones and "
    f"{i * 5 % 11} shells." for i in range(60)) + " Question: how many stones does item 17 hold? Answer:"
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    LONG,
]
PORT = 18097


def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def get(path):
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{path}", timeout=600) as r:
        return json.load(r)


NEUTRAL = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0, "seed": 1,
           "cache_prompt": False}


def greedy(ids):
    body = dict(NEUTRAL, prompt=ids, n_predict=N_PREDICT, temperature=0, return_tokens=True)
    return post("/completion", body)["tokens"]


def margin(ids):
    body = dict(NEUTRAL, prompt=ids, n_predict=1, temperature=1.0, n_probs=2, post_sampling_probs=True)
    top = post("/completion", body)["completion_probabilities"][0]["top_probs"]
    return top[0]["id"], math.log(top[0]["prob"]) - math.log(top[1]["prob"])


def main():
    model, out_path = sys.argv[1:3]
    bin_dir = os.path.expanduser("~/.cache/gemma-anchors/llama.cpp/build/bin")
    runs = []
    for ty in TYPES:
        server = subprocess.Popen(
            [os.path.join(bin_dir, "llama-server"), "-m", model, "--host", "127.0.0.1", "--port", str(PORT),
             "-t", "2", "-c", "2048", "-fa", "on", "-np", "1", "-ctk", ty, "-ctv", ty],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(240):
                try:
                    if get("/health").get("status") == "ok":
                        break
                except Exception:
                    time.sleep(0.5)
            cases = []
            for prompt in PROMPTS:
                ids = post("/tokenize", {"content": prompt, "add_special": True})["tokens"]
                gen = greedy(ids)
                margins = []
                for i in range(len(gen)):
                    best, m = margin(ids + gen[:i])
                    # Teacher-forced and decoded token by token llama.cpp rounds differently: a different best
                    # token is a near-tie, margin 0.
                    if best != gen[i]:
                        print(f"  {ty} step {i}: teacher-forced best {best} != greedy {gen[i]} ({m:.4f})",
                              file=sys.stderr)
                        m = 0.0
                    margins.append(round(m, 4))
                print(f"{ty} {len(ids)} tokens: {post('/detokenize', {'tokens': gen})['content']!r}", file=sys.stderr)
                cases.append({"prompt_ids": ids, "gen_ids": gen, "top1_top2_margin": margins})
            runs.append({"cache_type_k": ty, "cache_type_v": ty, "cases": cases})
        finally:
            server.terminate()
            server.wait()
    version = subprocess.run([os.path.join(bin_dir, "llama-server"), "--version"], capture_output=True,
                             text=True).stderr.strip().splitlines()[0]
    out = {"llama_cpp_version": version, "flash_attn": "on", "prompts": PROMPTS, "runs": runs}
    with open(out_path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
