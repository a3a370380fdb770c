#!/usr/bin/env python3
"""Greedy tokens of gemma.cpp against gemma-rs on the same SBS file, for the shared golden prompts.

    scripts/gemmacpp_parity.py GEMMACPP_BIN FILE.sbs [--gemma target/release/gemma] [-n 24] [--rope-freq-base B]

gemma.cpp (built from source outside the repository, see docs/sbs.md) prints only text, so the two are compared
as text: gemma-rs's tokens are joined one by one until the joined text leaves gemma.cpp's. A divergence at a
step where gemma-rs's two best tokens are within NEAR_TIE logits of each other is a near-tie (either engine's
rounding can tip it); any other divergence is a failure. Both engines take the global layers' RoPE base from
the file's config (`use_global_timescale`, which `gemma convert` writes); for a Gemma 3 file whose config
predates that field gemma.cpp uses 10,000 where gemma-rs uses 1,000,000, so pass `--rope-freq-base 10000`
to compare on such a file. Exit status 1 when some prompt fails.
"""

import argparse
import json
import pathlib
import subprocess
import sys

NEAR_TIE = 0.75
ROOT = pathlib.Path(__file__).resolve().parent.parent
GOLDENS = ROOT / "testdata/goldens/gemma3_270m_goldens_shared.json"


def gemmacpp_text(binary, sbs, prompt, n):
    out = subprocess.run(
        [binary, "--weights", sbs, "--prompt", prompt, "--max_generated_tokens", str(n),
         "--top_k", "1", "--temperature", "0", "--deterministic", "1", "--verbosity", "0"],
        capture_output=True, text=True, check=True)
    return out.stdout.strip()


def gemma_rs_steps(gemma, sbs, prompt, n, rope_freq_base):
    base = ["--rope-freq-base", str(rope_freq_base)] if rope_freq_base else []
    out = subprocess.run(
        [gemma, "-m", sbs, *base, "run", "-p", prompt, "-n", str(n),
         "--temperature", "0", "--ignore-eos", "--logprobs", "2", "--json"],
        capture_output=True, text=True, check=True)
    steps = []
    for lp in json.loads(out.stdout)["logprobs"]:
        top = lp["top_logprobs"]
        margin = top[0]["logprob"] - top[1]["logprob"] if len(top) > 1 else float("inf")
        steps.append((lp["token"], margin))
    return steps


def compare(reference, steps):
    """(tokens agreeing, margin at the first disagreement or None when all agree)."""
    # gemma.cpp's output starts without the first token's leading space; normalise whitespace at the ends.
    reference = reference.strip()
    text = ""
    for i, (token, margin) in enumerate(steps):
        candidate = (text + token).lstrip()
        if not reference.startswith(candidate.rstrip()) and not candidate.startswith(reference):
            return i, margin
        if len(candidate.strip()) >= len(reference):
            return len(steps), None  # gemma.cpp stopped (end of turn) or was cut here
        text += token
    return len(steps), None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gemmacpp")
    ap.add_argument("sbs")
    ap.add_argument("--gemma", default=str(ROOT / "target/release/gemma"))
    ap.add_argument("-n", type=int, default=24)
    ap.add_argument("--rope-freq-base", type=float, help="gemma-rs's global RoPE base, for files without the flag")
    args = ap.parse_args()
    failures = 0
    for gi, g in enumerate(json.load(open(GOLDENS))):
        prompt = g["prompt"]
        ref = gemmacpp_text(args.gemmacpp, args.sbs, prompt, args.n)
        steps = gemma_rs_steps(args.gemma, args.sbs, prompt, args.n, args.rope_freq_base)
        agree, margin = compare(ref, steps)
        if margin is None:
            verdict = f"same {agree} tokens"
        elif margin < NEAR_TIE:
            verdict = f"same up to step {agree}, a near-tie (gemma-rs margin {margin:.3f})"
        else:
            verdict = f"DIFFERENT at step {agree} (gemma-rs margin {margin:.3f})"
            failures += 1
        print(f"{gi:2} {verdict}: {prompt[:40]!r}")
        if margin is not None:
            print(f"     gemma.cpp: {ref!r}\n     gemma-rs:  {''.join(t for t, _ in steps)!r}")
    print(f"{failures} prompt(s) differ outside a near-tie")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
