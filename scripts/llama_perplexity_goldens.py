#!/usr/bin/env python3
"""Records llama.cpp's `llama-perplexity` results on a text, for `gemma perplexity`'s parity test.

For each context size it runs llama-perplexity twice, with flash attention on (llama.cpp's default) and off:
the two paths round differently, and how far apart they land is the yardstick for how far ours may land from
either. llama.cpp is built beside the project, never committed:

    LLAMA_BIN=~/.cache/gemma-anchors/llama.cpp/build/bin python3 scripts/llama_perplexity_goldens.py \
        ~/.cache/gemma-rs/models/gemma-3-270m-q4_k_m.gguf testdata/perplexity/lighthouses.txt \
        testdata/goldens/gemma3_270m_llama_perplexity.json
"""
import json
import os
import re
import subprocess
import sys


def run(binary, model, text, n_ctx, flash):
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.dirname(binary))
    cmd = [binary, "-m", model, "-f", text, "-c", str(n_ctx), "-t", "2", "-fa", "on" if flash else "off"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    log = out.stdout + out.stderr
    chunks = int(re.search(r"calculating perplexity over (\d+) chunks", log).group(1))
    running = [float(v) for v in re.findall(r"\[\d+\](\d+\.\d+),", log)]
    final = re.search(r"Final estimate: PPL = (\d+\.\d+) \+/- (\d+\.\d+)", log)
    assert len(running) == chunks, (running, chunks)
    return {"chunks": chunks, "running_ppl": running, "ppl": float(final.group(1)), "ppl_error": float(final.group(2))}


def main():
    model, text, out_path = sys.argv[1:4]
    binary = os.path.join(os.path.expanduser(os.environ.get("LLAMA_BIN", "")), "llama-perplexity")
    results = []
    for n_ctx in (64, 128):
        on, off = run(binary, model, text, n_ctx, True), run(binary, model, text, n_ctx, False)
        results.append({"n_ctx": n_ctx, "flash_attention_on": on, "flash_attention_off": off})
        print(f"n_ctx {n_ctx}: {on['ppl']} (fa on), {off['ppl']} (fa off)", file=sys.stderr)
    doc = {"model": os.path.basename(model), "text": os.path.basename(text), "runs": results}
    json.dump(doc, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
