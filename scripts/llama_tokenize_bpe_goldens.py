#!/usr/bin/env python3
"""Records llama.cpp's token ids for SmolLM2's byte-level BPE tokenizer (tokenizer.ggml.model = gpt2,
tokenizer.ggml.pre = smollm), the reference for crates/gemma-core/tests/tokenizer_bpe_parity.rs.

Every text goes through llama.cpp's own `llama-tokenize` (built beside the project, never committed), from a
file so its bytes are exact, with `--no-escape` (llama-tokenize otherwise turns a backslash followed by `n`
into a newline) and `--no-bos` (SmolLM2 adds none anyway). Each text is tokenized twice: with special-token
parsing (llama-tokenize's default) and with `--no-parse-special`.

    python3 scripts/llama_tokenize_bpe_goldens.py \
        [--llama-cpp ~/.cache/gemma-anchors/llama.cpp] \
        [--model ~/.cache/gemma-rs/models/SmolLM2-135M-Instruct.Q4_1.gguf] \
        [--corpus testdata/goldens/gemma3_tokenizer_corpus.txt] \
        [--out testdata/goldens/smollm2_tokenizer_corpus.json]
"""
import argparse
import json
import os
import re
import subprocess
import tempfile

# Strings that exercise each rule of the pre-tokenizer and the merge loop.
HARD_STRINGS = [
    "",
    " ",
    "I'm sure you're right, we've said they'll know he'd go; it's Sam's, don't.",
    "I'M SURE YOU'RE RIGHT, WE'VE SAID THEY'LL KNOW HE'D GO; IT'S SAM'S, DON'T.",
    "It'S yOu'Re We'Ve tHEY'Ll hE'd",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D 'x '",
    "rock'n'roll ''s '''",
    "1 12 123 1234 12345",
    "0 00 000 0000 00000 9876543210",
    "x1y22z333w4444v55555 3.14159 1,000,000 2026-11-23 0x1F 1e-9 -42",
    "a  b   c    d     e",
    "   leading spaces",
    "trailing spaces   ",
    "      ",
    "\n",
    "\n\n\n",
    " \n \n  \n   ",
    "line\n\n\nnext\n",
    "\r\nwindows\r\nline\r\n\r\n",
    "\tindent\t\ttwo tabs\t \t mixed",
    "\t",
    "中文分词测试，日本語のテキスト，한국어 텍스트",
    "🤖🫨🪿👩‍👩‍👧‍👦🏳️‍🌈 ❤️ 🤖x",
    "naïve café résumé Ångström Ægir œuvre façade São Paulo Dvořák",
    "e\u0301 a\u0308\u0332 Z\u0351\u035b",
    "!!! ??? ... --- ,,, ;;; ::: ((( ))) [[[ ]]] {{{ }}} <<< >>> @@@ ### %%% &&& ***",
    "Hello!!!... What?! (yes) [no] {maybe} <tag/> «quotes» “curly” ‘single’ — – …",
    "\"quoted\" 'single' `back` C:\\path\\to\\file a+b=c; x^2 ~ y|z $5 100% _under_",
    "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more<|endoftext|> and <|im_start|<|im_end|>>",
    "١٢٣ ४५६ ①②③ Ⅻ ½ ²³ 𝟙𝟚",
    "\u00a0nbsp\u2003em\u3000ideographic \u0085next",
    "\u200b\u200d\ufeffzero width\u2028sep",
    "\u0000\u0001\u0007\u001b[31mred\u001b[0m\u007f",
    "\u0378 unassigned \ue000 private \U0001fae9",
    "def fib(n):\n    if n < 2:\n        return n  # base\n    return fib(n-1) + fib(n-2)\n",
    "https://example.com/path?query=1&x=y#frag user@example.org",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "pneumonoultramicroscopicsilicovolcanoconiosis Supercalifragilisticexpialidocious",
]


def tokenize(binary, model, text, parse_special):
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8"))
        path = f.name
    try:
        cmd = [binary, "-m", model, "-f", path, "--ids", "--no-bos", "--no-escape", "--log-disable"]
        if not parse_special:
            cmd.append("--no-parse-special")
        out = subprocess.run(cmd, check=True, capture_output=True).stdout.decode()
    finally:
        os.unlink(path)
    lists = re.findall(r"\[[0-9, ]*\]", out)
    if len(lists) != 1:
        raise RuntimeError(f"unexpected llama-tokenize output for {text!r}: {out!r}")
    return json.loads(lists[0])


def llama_cpp_version(llama_cpp, binary):
    version = subprocess.run([binary, "--version"], capture_output=True).stderr.decode().strip()
    try:
        commit = subprocess.run(["git", "-C", llama_cpp, "rev-parse", "HEAD"], check=True,
                                capture_output=True).stdout.decode().strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        commit = None
    return {"version": version.splitlines()[0] if version else None, "commit": commit}


def main():
    home = os.path.expanduser("~")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", default=os.path.join(home, ".cache/gemma-anchors/llama.cpp"))
    parser.add_argument("--model", default=os.path.join(home, ".cache/gemma-rs/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--corpus", default="testdata/goldens/gemma3_tokenizer_corpus.txt")
    parser.add_argument("--out", default="testdata/goldens/smollm2_tokenizer_corpus.json")
    args = parser.parse_args()

    binary = os.path.join(args.llama_cpp, "build/bin/llama-tokenize")
    with open(args.corpus, encoding="utf-8", newline="") as f:
        corpus = f.read()
    lines = corpus.split("\n")
    if lines and lines[-1] == "":
        lines.pop()

    def both(text):
        return {
            "special": tokenize(binary, args.model, text, True),
            "plain": tokenize(binary, args.model, text, False),
        }

    whole = both(corpus)
    line_ids = [both(line) for line in lines]
    hard = [dict(text=text, **both(text)) for text in HARD_STRINGS]

    out = {
        "note": "llama.cpp llama-tokenize on SmolLM2-135M-Instruct (gpt2 / smollm), --no-bos --no-escape; "
                "'special' parses special tokens, 'plain' is --no-parse-special. whole_*: the entire corpus "
                "file incl. its trailing newline; lines: file.split('\\n') with the final empty element "
                "dropped, newline not included; hard: strings chosen to stress the pre-tokenizer.",
        "llama_cpp": llama_cpp_version(args.llama_cpp, binary),
        "model": os.path.basename(args.model),
        "whole_special": whole["special"],
        "whole_plain": whole["plain"],
        "lines": lines,
        "lines_special": [l["special"] for l in line_ids],
        "lines_plain": [l["plain"] for l in line_ids],
        "hard": hard,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
