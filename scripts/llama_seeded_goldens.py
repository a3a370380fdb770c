#!/usr/bin/env python3
"""Records llama.cpp's seeded sampling on the real model, for `seeded_sampling_follows_llama_cpp` in
crates/gemma-core/tests/sampling_real.rs.

For each prompt of the shared goldens and each seed it asks a llama-server (built beside the project, never
committed) for 24 tokens with llama.cpp's default chain (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05) and
the probabilities that chain left (`post_sampling_probs`, all of them: at most 40). From those and the seed it
replays llama.cpp's draw (std::mt19937, one uniform double per token, the first candidate whose running sum
reaches it) and records how far each draw fell from the nearest boundary between candidates: a draw that close
picks a neighbour as soon as the probabilities move a little, so there the two engines may part ways.

    llama-server -m gemma-3-270m-q4_k_m.gguf --host 127.0.0.1 --port 18080 -t 2 -c 4096 -fa on
    python3 scripts/llama_seeded_goldens.py http://127.0.0.1:18080 \
        testdata/goldens/gemma3_270m_goldens_shared.json testdata/goldens/gemma3_270m_llama_seeded.json
"""
import json
import sys
import urllib.request

SEEDS = [1, 2, 3, 42]
PROMPTS = 6
N = 24
CHAIN = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.0,
         "typical_p": 1.0, "xtc_probability": 0.0, "dry_multiplier": 0.0, "top_n_sigma": -1.0, "mirostat": 0}


class Mt19937:
    def __init__(self, seed):
        self.mt = [seed] + [0] * 623
        for i in range(1, 624):
            prev = self.mt[i - 1]
            self.mt[i] = (1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF
        self.i = 624

    def u32(self):
        if self.i >= 624:
            for k in range(624):
                y = (self.mt[k] & 0x80000000) | (self.mt[(k + 1) % 624] & 0x7FFFFFFF)
                self.mt[k] = self.mt[(k + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            self.i = 0
        y = self.mt[self.i]
        self.i += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        return y ^ (y >> 18)

    def uniform(self):
        low, high = self.u32(), self.u32()
        return (low + high * 4294967296.0) / 18446744073709551616.0


def complete(server, ids, seed):
    body = dict(CHAIN, prompt=ids, n_predict=N, seed=seed, n_probs=40, post_sampling_probs=True,
                return_tokens=True, cache_prompt=False)
    req = urllib.request.Request(server + "/completion", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def main():
    server, goldens_path, out_path = sys.argv[1:4]
    goldens = json.load(open(goldens_path))[:PROMPTS]
    out = []
    for g in goldens:
        for seed in SEEDS:
            res = complete(server, g["prompt_ids"], seed)
            rng = Mt19937(seed)
            margins = []
            for tok, step in zip(res["tokens"], res["completion_probabilities"]):
                u = rng.uniform()
                cum, bounds, pick = 0.0, [], None
                for j, cand in enumerate(step["top_probs"]):
                    cum += cand["prob"]
                    bounds.append(cum)
                    if pick is None and cum >= u:
                        pick = cand["id"]
                # The replay must pick what llama.cpp picked, or the record means nothing.
                assert pick == tok, (seed, tok, pick)
                margins.append(round(min(abs(b - u) for b in bounds[:-1]) if len(bounds) > 1 else 1.0, 4))
            out.append({"prompt_ids": g["prompt_ids"], "seed": seed, "gen_ids": res["tokens"], "margins": margins})
            print(f"{len(out)}/{len(goldens) * len(SEEDS)}", file=sys.stderr)
    json.dump({"chain": CHAIN, "runs": out}, open(out_path, "w"), separators=(",", ":"))


if __name__ == "__main__":
    main()
