#!/usr/bin/env python3
"""Records llama.cpp's greedy continuations with the DRY sampler on, for `gemma-core/tests/sampling_real.rs`.

For each case: the prompt (tokenized by llama-server, BOS added), the DRY settings, llama.cpp's greedy tokens
with DRY (`temperature: 0`; every other sampler neutral), its greedy tokens without DRY (to show DRY acts), and
at each step of the DRY run the margin between the best two logits *after* DRY (log p1 − log p2 of the
post-sampling probabilities of a temperature-1 request on the same context, teacher-forced), so the test knows
where a near-tie makes the two engines free to differ. This asks a llama-server (built beside the project by
`/work/shared/tools/build-llamacpp.sh`, never committed) on loopback:

    llama-server -m gemma-3-270m-q4_k_m.gguf --host 127.0.0.1 --port 18080 -t 2 -c 4096 -fa on
    python3 scripts/llama_dry_goldens.py http://127.0.0.1:18080 testdata/goldens/gemma3_270m_llama_dry.json

The goldens committed were made with the llama.cpp vendored in llama-cpp-python 0.3.36.
"""
import json
import math
import sys
import urllib.request

N_PREDICT = 40

# Every sampler but DRY neutral; the prompt cache only skips recomputing the prompt (the server still feeds
# every prompt token to the sampler, so DRY sees the whole prompt).
NEUTRAL = {
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "top_n_sigma": -1.0,
    "xtc_probability": 0.0,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "cache_prompt": True,
    "seed": 1,
}

CASES = [
    {
        "prompt": "The cat sat on the mat. The cat sat on the mat. The cat sat on the mat. The cat sat on the mat.",
        "dry": {"dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2, "dry_penalty_last_n": 64,
                "dry_sequence_breakers": ["\n", ":", "\"", "*"]},
    },
    {
        # "love you" spans two tokens (" love", " you"): the breaker is found across a token boundary.
        "prompt": "I love you. I love you. I love you. I love you. I love you.",
        "dry": {"dry_multiplier": 1.0, "dry_base": 1.5, "dry_allowed_length": 2, "dry_penalty_last_n": 64,
                "dry_sequence_breakers": ["love you"]},
    },
    {
        # The same prompt and settings with a newline as the only breaker: now DRY acts.
        "prompt": "I love you. I love you. I love you. I love you. I love you.",
        "dry": {"dry_multiplier": 1.0, "dry_base": 1.5, "dry_allowed_length": 2, "dry_penalty_last_n": 64,
                "dry_sequence_breakers": ["\n"]},
    },
    {
        "prompt": "one two three four five one two three four five one two three four five",
        "dry": {"dry_multiplier": 0.5, "dry_base": 2.0, "dry_allowed_length": 3, "dry_penalty_last_n": 24,
                "dry_sequence_breakers": ["\n", ":", "\"", "*"]},
    },
]


def post(server, path, body):
    req = urllib.request.Request(server + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)


def greedy(server, ids, n, dry):
    body = dict(NEUTRAL, prompt=ids, n_predict=n, temperature=0, return_tokens=True, **dry)
    return post(server, "/completion", body)["tokens"]


def margin_after_dry(server, ids, dry):
    """log p1 − log p2 after the whole chain at temperature 1 (so after DRY, before any truncation)."""
    body = dict(NEUTRAL, prompt=ids, n_predict=1, temperature=1.0, n_probs=2, post_sampling_probs=True, **dry)
    top = post(server, "/completion", body)["completion_probabilities"][0]["top_probs"]
    return top[0]["id"], math.log(top[0]["prob"]) - math.log(top[1]["prob"])


def main():
    server, out_path = sys.argv[1:3]
    out = []
    for case in CASES:
        ids = post(server, "/tokenize", {"content": case["prompt"], "add_special": True, "parse_special": True})
        ids = ids["tokens"]
        gen = greedy(server, ids, N_PREDICT, case["dry"])
        plain = greedy(server, ids, N_PREDICT, {"dry_multiplier": 0.0})
        margins = []
        for i in range(len(gen)):
            best, margin = margin_after_dry(server, ids + gen[:i], case["dry"])
            # The temperature-1 request ranks the same tokens the greedy run chose.
            assert best == gen[i] or margin < 1e-3, (case["prompt"], i, best, gen[i])
            margins.append(round(margin, 4))
        out.append({"prompt": case["prompt"], "prompt_ids": ids, "dry": case["dry"], "gen_ids": gen,
                    "gen_top1_top2_margin_after_dry": margins, "no_dry_gen_ids": plain})
        print(f"{len(out)}/{len(CASES)}", file=sys.stderr)
    with open(out_path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
