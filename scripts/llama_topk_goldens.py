#!/usr/bin/env python3
"""Records llama.cpp's five best tokens (log-probabilities) at every teacher-forced step of the shared goldens.

The shared goldens give llama.cpp's best token and its margin over the runner-up, but not which tokens are
near the top; the free-running parity rule ("at the first near-tie, our token is one llama.cpp itself has tied
with its best, within 0.75") needs them. Three-way ties occur (prompt 3, step 7: three tokens within 0.12). This asks a llama-server (built beside the project, never committed) on loopback:

    llama-server -m gemma-3-270m-q4_k_m.gguf --host 127.0.0.1 --port 18080 -t 2 -c 4096 -fa on
    python3 scripts/llama_topk_goldens.py http://127.0.0.1:18080 \
        testdata/goldens/gemma3_270m_goldens_shared.json testdata/goldens/gemma3_270m_llama_top5.json
"""
import json
import sys
import urllib.request


def top_k(server, ids):
    body = json.dumps({"prompt": ids, "n_predict": 1, "temperature": 0, "n_probs": 5, "cache_prompt": True}).encode()
    req = urllib.request.Request(server + "/completion", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        probs = json.load(r)["completion_probabilities"][0]["top_logprobs"]
    return [[p["id"], p["logprob"]] for p in probs]


def main():
    server, goldens_path, out_path = sys.argv[1:4]
    goldens = json.load(open(goldens_path))
    out = []
    for g in goldens:
        steps = [top_k(server, g["prompt_ids"] + g["gen_ids"][:i]) for i in range(len(g["gen_ids"]))]
        out.append({"prompt_ids": g["prompt_ids"], "top_logprobs": steps})
        print(f"{len(out)}/{len(goldens)}", file=sys.stderr)
    json.dump(out, open(out_path, "w"), separators=(",", ":"))


if __name__ == "__main__":
    main()
