#!/usr/bin/env python3
"""Writes a llama.cpp multiple-choice task file (the binary `llama-perplexity --multiple-choice` reads) from a
text file of blocks separated by empty lines: the question on the first line, then one answer per line, the
right one starting with "* ". Both answer sets (mc1, mc2) get the same answers and labels.

    python3 scripts/multiple_choice_file.py testdata/multiple-choice/everyday-questions.txt OUT.bin
"""
import struct
import sys


def string(s):
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def answers(items):
    out = struct.pack("<I", len(items))
    out += b"".join(string(a) for a, _ in items)
    out += b"".join(struct.pack("<i", 1 if right else 0) for _, right in items)
    return out


def main(src, dst):
    blocks = [b.strip("\n").split("\n") for b in open(src, encoding="utf-8").read().split("\n\n") if b.strip()]
    bodies = []
    for lines in blocks:
        items = [(l[2:], True) if l.startswith("* ") else (l, False) for l in lines[1:]]
        bodies.append(string(lines[0]) + answers(items) + answers(items))
    head = 4 + 4 * len(bodies)
    offsets, at = [], head
    for b in bodies:
        offsets.append(at)
        at += len(b)
    data = struct.pack("<I", len(bodies)) + b"".join(struct.pack("<I", o) for o in offsets) + b"".join(bodies)
    open(dst, "wb").write(data)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
