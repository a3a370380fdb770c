#!/usr/bin/env python3
"""Records llama-perplexity's strided perplexity (`--ppl-stride`) output, for `gemma perplexity`'s parity tests.

For each setting it runs llama-perplexity with flash attention on (llama.cpp's default) and off, the two paths
whose distance is the yardstick for ours, and keeps what it prints on stdout: the running perplexity, as
`[n]ppl,` or (`--ppl-output-type 1`) one line per window (per chunk without a stride). The one stdout line that is a timing (the ETA's
"N minutes", printed there while the rest of the ETA goes to stderr) is left out.

`-b` is `-c`: with a larger batch llama-perplexity runs `b / c` sequences, its strided window (the whole
context) outgrows the cache of the one sequence it uses, and the run fails. llama.cpp is built beside the
project, never committed:

    LLAMA_BIN=~/.cache/gemma-anchors/llama.cpp/build/bin python3 scripts/llama_perplexity_stride_goldens.py \
        ~/.cache/gemma-rs/models/gemma-3-270m-q4_k_m.gguf testdata/perplexity/lighthouses.txt \
        testdata/perplexity/stride
"""
import os
import re
import subprocess
import sys

# (file name, llama-perplexity arguments, entries expected on stdout)
SETTINGS = [
    ("c128-stride32", ["-c", "128", "-b", "128", "--ppl-stride", "32", "--chunks", "6"], 6),
    ("c64-stride16-type1", ["-c", "64", "-b", "64", "--ppl-stride", "16", "--chunks", "8", "--ppl-output-type", "1"], 8),
    # output type 1 without a stride: two chunks side by side (llama.cpp prints a group's place on both lines)
    ("c64-type1", ["-c", "64", "-b", "128", "--chunks", "4", "--ppl-output-type", "1"], 4),
]


def run(binary, model, text, args, flash, expected):
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.dirname(binary))
    cmd = [binary, "-m", model, "-f", text, "-t", "2", "-fa", "on" if flash else "off"] + args
    # llama.cpp logs from a thread of its own: a run whose output came out short is run again
    for _ in range(5):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        lines = [l for l in out.stdout.splitlines(keepends=True) if not re.fullmatch(r"[\d.]+ minutes\n", l)]
        stdout = "".join(lines)
        entries = len(re.findall(r"\[\d+\]\d+\.\d+,", stdout)) + len(re.findall(r"(?m)^ +\d+  \d+\.\d{4}(  -?\d+\.\d+  -?\d+\.\d+)?$", stdout))
        if entries == expected and stdout.endswith("\n\n"):
            return stdout
    sys.exit(f"{' '.join(cmd)}: {entries} entries where {expected} were expected:\n{out.stdout}\n{out.stderr}")


def main():
    model, text, out_dir = sys.argv[1:4]
    binary = os.path.join(os.path.expanduser(os.environ.get("LLAMA_BIN", "")), "llama-perplexity")
    os.makedirs(out_dir, exist_ok=True)
    for name, args, expected in SETTINGS:
        for flash in (True, False):
            stdout = run(binary, model, text, args, flash, expected)
            path = os.path.join(out_dir, f"{name}.fa-{'on' if flash else 'off'}.txt")
            with open(path, "w") as f:
                f.write(stdout)
            print(f"{path}: {stdout.strip().splitlines()[-1]}", file=sys.stderr)


if __name__ == "__main__":
    main()
