#!/usr/bin/env python3
"""Records llama.cpp's answers on the Gemma 2 and Gemma 1 test files, for `gemma-core/tests/gemma2_parity.rs`.

The test files are Gemma 3 270M's real weights (the default model) rewritten as a `gemma2` GGUF (keys renamed,
soft-caps 50 / 30 added, sliding window 512 kept, RoPE base left to the default 10,000, the QK-norm tensors
dropped and folded into the query/key projections as far as a linear map can) and as a `gemma` GGUF (the post
norms, folded the same way into the output projections, and the window dropped too); `docs/architectures.md`
says why the folding. They are no models anyone would use: they exist to run the same weights through
llama.cpp's Gemma 2 and Gemma 1 graphs and through ours. The test's own builder writes them; make them with

    GEMMA2_TEST_FILES=/tmp/g2 cargo test --release -p gemma-core --test gemma2_parity -- --ignored write_test_files

which leaves /tmp/g2/gemma2-test.gguf and /tmp/g2/gemma1-test.gguf (their sha256 go into the goldens, and the
test checks that its builder still makes these bytes). Then, with llama-server from
`~/.cache/gemma-anchors/llama.cpp/build/bin` (never committed) on loopback:

    python3 scripts/llama_gemma2_goldens.py /tmp/g2/gemma2-test.gguf testdata/goldens/gemma2_llama.json
    python3 scripts/llama_gemma2_goldens.py /tmp/g2/gemma1-test.gguf testdata/goldens/gemma1_llama.json

For each of three prompts (one of over 1,000 tokens, so the 512-position window of Gemma 2's local layers
slides) it records the greedy continuation and, teacher-forced at each step, llama.cpp's five best tokens with
their log-probabilities (temperature 0, no truncation); the margin between the best two tells the test where a
near-tie lets two engines differ. Flash attention on, as llama.cpp's CPU default picks it, with its default f16
KV cache.
"""
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request

N_PREDICT = 24
LONG = " ".join(
    f"Item {i}: the {['red', 'green', 'blue', 'yellow'][i % 4]} box holds {i * 7 % 13} stones and "
    f"{i * 5 % 11} shells." for i in range(60)) + " Question: how many stones does item 17 hold? Answer:"
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    LONG,
]
PORT = 18099


def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def get(path):
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{path}", timeout=600) as r:
        return json.load(r)


NEUTRAL = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0, "seed": 1}


def greedy(ids):
    body = dict(NEUTRAL, prompt=ids, n_predict=N_PREDICT, temperature=0, return_tokens=True, cache_prompt=False)
    return post("/completion", body)["tokens"]


def top5(ids):
    body = dict(NEUTRAL, prompt=ids, n_predict=1, temperature=0, n_probs=5, cache_prompt=True)
    probs = post("/completion", body)["completion_probabilities"][0]["top_logprobs"]
    return [[p["id"], round(p["logprob"], 5)] for p in probs]


def main():
    model, out_path = sys.argv[1:3]
    bin_dir = os.path.expanduser("~/.cache/gemma-anchors/llama.cpp/build/bin")
    with open(model, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    server = subprocess.Popen(
        [os.path.join(bin_dir, "llama-server"), "-m", model, "--host", "127.0.0.1", "--port", str(PORT),
         "-t", "2", "-c", "2048", "-fa", "on", "-np", "1"],
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
            steps = [top5(ids + gen[:i]) for i in range(len(gen))]
            for i, s in enumerate(steps):
                if s[0][0] != gen[i]:
                    # Teacher-forced and decoded token by token llama.cpp rounds differently: a near-tie.
                    print(f"  step {i}: teacher-forced best {s[0][0]} != greedy {gen[i]}", file=sys.stderr)
            text = post("/detokenize", {"tokens": gen})["content"]
            print(f"{len(ids)} tokens: {text!r}", file=sys.stderr)
            cases.append({"prompt_ids": ids, "gen_ids": gen, "gen_text": text, "top_logprobs": steps})
    finally:
        server.terminate()
        server.wait()
    version = subprocess.run([os.path.join(bin_dir, "llama-server"), "--version"], capture_output=True,
                             text=True).stderr.strip().splitlines()[0]
    out = {"llama_cpp_version": version, "model_sha256": sha, "flash_attn": "on", "prompts": PROMPTS,
           "cases": cases}
    with open(out_path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
