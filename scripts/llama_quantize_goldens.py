#!/usr/bin/env python3
"""Records what llama.cpp's `llama-quantize` writes, for `gemma-core/tests/quantize_parity.rs`.

For each job (input model, options, file type) it runs llama-quantize with 2 threads and records the sha256 of
the whole output file and, per tensor, its name, GGML type, shape and the sha256 of its data. The test runs
`gemma quantize`'s library on the same input with the same options and compares: tensor data must match byte
for byte, and so must the whole file.

Jobs whose input is another job's output (`"from"`) chain: the F32 file made from the Q4_K_M model is then
quantized the ordinary way (no requantizing), which is the path a user with an F32/F16 model takes.

    LLAMA_BIN=~/.cache/gemma-anchors/llama.cpp/build/bin \\
        python3 scripts/llama_quantize_goldens.py testdata/goldens/llama_quantize.json [PREFIX,...]

With PREFIXes only the jobs whose names start with one of them run, and their results replace those jobs in
the existing file (the others are kept).

The Gemma 2 and Gemma 1 test files (Gemma 3 270M's weights rewritten as `gemma2` / `gemma` GGUF files,
docs/architectures.md) are read from $GEMMA_MODELS/test-files/, where `gemma-core`'s tests write them.

Models are read from $GEMMA_MODELS (default ~/.cache/gemma-rs/models); a model that is not there is skipped
(with a note), so the goldens for SmolLM2 are only written where it has been pulled.
"""
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

GEMMA = "gemma-3-270m-q4_k_m.gguf"
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA2 = "test-files/gemma2-test.gguf"
GEMMA1 = "test-files/gemma1-test.gguf"
IMATRIX = "testdata/imatrix/gemma3-270m-lighthouses.imatrix.gguf"
IMATRIX_DAT = "testdata/imatrix/gemma3-270m-lighthouses.imatrix.dat"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, input model or {"from": job name}, extra options, file type)
JOBS = [
    ("gemma_q8_0", GEMMA, ["--allow-requantize"], "Q8_0"),
    ("gemma_q4_0", GEMMA, ["--allow-requantize"], "Q4_0"),
    ("gemma_q4_1", GEMMA, ["--allow-requantize"], "Q4_1"),
    ("gemma_q5_0", GEMMA, ["--allow-requantize"], "Q5_0"),
    ("gemma_q5_1", GEMMA, ["--allow-requantize"], "Q5_1"),
    ("gemma_q2_k", GEMMA, ["--allow-requantize"], "Q2_K"),
    ("gemma_q3_k_s", GEMMA, ["--allow-requantize"], "Q3_K_S"),
    ("gemma_q3_k_m", GEMMA, ["--allow-requantize"], "Q3_K_M"),
    ("gemma_q3_k_l", GEMMA, ["--allow-requantize"], "Q3_K_L"),
    ("gemma_q4_k_s", GEMMA, ["--allow-requantize"], "Q4_K_S"),
    ("gemma_q4_k_m", GEMMA, ["--allow-requantize"], "Q4_K_M"),
    ("gemma_q5_k_s", GEMMA, ["--allow-requantize"], "Q5_K_S"),
    ("gemma_q5_k_m", GEMMA, ["--allow-requantize"], "Q5_K_M"),
    ("gemma_q6_k", GEMMA, ["--allow-requantize"], "Q6_K"),
    ("gemma_pure_q4_k", GEMMA, ["--allow-requantize", "--pure"], "Q4_K"),
    # IQ4_XS rows of 640 are not whole super-blocks: they fall back to IQ4_NL.
    ("gemma_iq4_nl", GEMMA, ["--allow-requantize"], "IQ4_NL"),
    ("gemma_iq4_xs", GEMMA, ["--allow-requantize"], "IQ4_XS"),
    ("gemma_pure_iq4_xs", GEMMA, ["--allow-requantize", "--pure"], "IQ4_XS"),
    # Gemma 3 ties its output to the token embedding, so --output-tensor-type reaches token_embd (through the
    # mixture rules), unless --token-embedding-type names it first. (A 256-block type here makes llama-quantize
    # abort: the 640-wide rows do not divide.)
    ("gemma_q4_k_m_out_q4_1", GEMMA, ["--allow-requantize", "--output-tensor-type", "q4_1"], "Q4_K_M"),
    ("gemma_q6_k_embd_q5_0_out_q4_1", GEMMA,
     ["--allow-requantize", "--token-embedding-type", "q5_0", "--output-tensor-type", "q4_1"], "Q6_K"),
    ("gemma_f16", GEMMA, ["--allow-requantize"], "F16"),
    ("gemma_bf16", GEMMA, ["--allow-requantize"], "BF16"),
    ("gemma_f32", GEMMA, ["--allow-requantize"], "F32"),
    ("gemma_f32_to_q4_k_m", {"from": "gemma_f32"}, [], "Q4_K_M"),
    ("gemma_f32_to_q8_0", {"from": "gemma_f32"}, [], "Q8_0"),
    ("gemma_f16_to_q5_k_m", {"from": "gemma_f16"}, [], "Q5_K_M"),
    ("smollm2_q4_k_m", SMOLLM2, ["--allow-requantize"], "Q4_K_M"),
    ("smollm2_q8_0", SMOLLM2, ["--allow-requantize"], "Q8_0"),
    ("smollm2_q3_k_l", SMOLLM2, ["--allow-requantize"], "Q3_K_L"),
    ("smollm2_q2_k", SMOLLM2, ["--allow-requantize"], "Q2_K"),
    ("smollm2_q6_k_leave_output", SMOLLM2, ["--allow-requantize", "--leave-output-tensor"], "Q6_K"),
    ("smollm2_iq4_xs", SMOLLM2, ["--allow-requantize"], "IQ4_XS"),
    # With an importance matrix (made by llama-imatrix on the default model over lighthouses.txt, -c 128; the
    # path is given relative to the repository root, as the test gives it: llama-quantize writes it into the
    # output's metadata).
    ("gemma_imatrix_q4_k_m", GEMMA, ["--allow-requantize", "--imatrix", IMATRIX], "Q4_K_M"),
    ("gemma_imatrix_q2_k", GEMMA, ["--allow-requantize", "--imatrix", IMATRIX], "Q2_K"),
    ("gemma_imatrix_q2_k_s", GEMMA, ["--allow-requantize", "--imatrix", IMATRIX], "Q2_K_S"),
    ("gemma_imatrix_q3_k_m", GEMMA, ["--allow-requantize", "--imatrix", IMATRIX], "Q3_K_M"),
    ("gemma_imatrix_q5_k_m", GEMMA, ["--allow-requantize", "--imatrix", IMATRIX], "Q5_K_M"),
    ("gemma_imatrix_q6_k", GEMMA, ["--allow-requantize", "--imatrix", IMATRIX], "Q6_K"),
    ("gemma_imatrix_q4_0", GEMMA, ["--allow-requantize", "--imatrix", IMATRIX], "Q4_0"),
    ("gemma_imatrix_q4_1", GEMMA, ["--allow-requantize", "--imatrix", IMATRIX], "Q4_1"),
    ("gemma_imatrix_q5_0", GEMMA, ["--allow-requantize", "--imatrix", IMATRIX], "Q5_0"),
    ("gemma_imatrix_q5_1", GEMMA, ["--allow-requantize", "--imatrix", IMATRIX], "Q5_1"),
    ("gemma_imatrix_q8_0", GEMMA, ["--allow-requantize", "--imatrix", IMATRIX], "Q8_0"),
    ("gemma_imatrix_pure_q4_k", GEMMA, ["--allow-requantize", "--pure", "--imatrix", IMATRIX], "Q4_K"),
    ("gemma_imatrix_dat_q3_k_s", GEMMA, ["--allow-requantize", "--imatrix", IMATRIX_DAT], "Q3_K_S"),
    ("gemma_imatrix_exclude_q4_k_m", GEMMA,
     ["--allow-requantize", "--imatrix", IMATRIX, "--exclude-weights", "attn_v", "--exclude-weights", "ffn_up"],
     "Q4_K_M"),
    ("gemma_imatrix_include_q5_k_s", GEMMA,
     ["--allow-requantize", "--imatrix", IMATRIX, "--include-weights", "ffn_down"], "Q5_K_S"),
    ("gemma_f32_imatrix_q4_k_m", {"from": "gemma_f32"}, ["--imatrix", IMATRIX], "Q4_K_M"),
    # IQ4 weighs its scale search by the matrix; with one, the first FFN-down layers stay IQ4 (not Q5_K).
    ("gemma_imatrix_iq4_nl", GEMMA, ["--allow-requantize", "--imatrix", IMATRIX], "IQ4_NL"),
    ("gemma_imatrix_iq4_xs", GEMMA, ["--allow-requantize", "--imatrix", IMATRIX], "IQ4_XS"),
    ("gemma_imatrix_pure_iq4_xs", GEMMA, ["--allow-requantize", "--pure", "--imatrix", IMATRIX], "IQ4_XS"),
    ("gemma_f32_imatrix_iq4_xs", {"from": "gemma_f32"}, ["--imatrix", IMATRIX_DAT], "IQ4_XS"),
    # llama-quantize's rules name no Gemma architecture: Gemma 2 and Gemma 1 files follow the same ones (tied
    # output through token_embd, the attn_v / ffn_down mixtures); these check that ours do too.
    ("gemma2_q4_k_m", GEMMA2, ["--allow-requantize"], "Q4_K_M"),
    ("gemma2_q3_k_s", GEMMA2, ["--allow-requantize"], "Q3_K_S"),
    ("gemma2_q8_0", GEMMA2, ["--allow-requantize"], "Q8_0"),
    ("gemma2_iq4_xs", GEMMA2, ["--allow-requantize"], "IQ4_XS"),
    ("gemma1_q4_k_m", GEMMA1, ["--allow-requantize"], "Q4_K_M"),
    ("gemma1_q5_k_s", GEMMA1, ["--allow-requantize"], "Q5_K_S"),
]

GGML_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0", 9: "q8_1", 10: "q2_K",
              11: "q3_K", 12: "q4_K", 13: "q5_K", 14: "q6_K", 15: "q8_K", 20: "iq4_nl", 23: "iq4_xs", 30: "bf16"}
# (elements, bytes) per block
GEOMETRY = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
            10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 20: (32, 18),
            23: (256, 136)}


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return v[0]

    def string(self):
        n = self.take("Q")
        s = self.data[self.pos:self.pos + n].decode("utf-8")
        self.pos += n
        return s

    def value(self, t):
        scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
        if t in scalar:
            return self.take(scalar[t])
        if t == 8:
            return self.string()
        if t == 9:
            et = self.take("I")
            n = self.take("Q")
            return [self.value(et) for _ in range(n)]
        raise ValueError(f"unknown metadata type {t}")


def tensor_table(path):
    """[(name, type name, dims, sha256 of data)] in file order, and the metadata keys in order."""
    with open(path, "rb") as f:
        data = f.read()
    r = Reader(data)
    assert data[:4] == b"GGUF"
    r.pos = 4
    r.take("I")
    n_tensors = r.take("Q")
    n_kv = r.take("Q")
    keys = []
    alignment = 32
    for _ in range(n_kv):
        key = r.string()
        v = r.value(r.take("I"))
        if key == "general.alignment":
            alignment = v
        keys.append(key)
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.take("I")
        dims = [r.take("Q") for _ in range(n_dims)]
        ty = r.take("I")
        offset = r.take("Q")
        infos.append((name, dims, ty, offset))
    start = (r.pos + alignment - 1) // alignment * alignment
    out = []
    for name, dims, ty, offset in infos:
        per_block, block_bytes = GEOMETRY[ty]
        n = 1
        for d in dims:
            n *= d
        size = n // per_block * block_bytes
        blob = data[start + offset:start + offset + size]
        out.append({"name": name, "type": GGML_TYPES[ty], "dims": dims,
                    "sha256": hashlib.sha256(blob).hexdigest()})
    return out, keys


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    prefixes = sys.argv[2].split(",") if len(sys.argv) == 3 else None
    bin_dir = os.path.expanduser(os.environ.get("LLAMA_BIN", "~/.cache/gemma-anchors/llama.cpp/build/bin"))
    models = os.path.expanduser(os.environ.get("GEMMA_MODELS", "~/.cache/gemma-rs/models"))
    env = dict(os.environ, LD_LIBRARY_PATH=bin_dir)
    commit = None
    results = {}
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, source, options, ftype in JOBS:
            if prefixes and not any(name.startswith(p) for p in prefixes):
                continue
            if isinstance(source, dict):
                if source["from"] not in outputs:
                    print(f"skipping {name}: {source['from']} was not made", file=sys.stderr)
                    continue
                input_path = outputs[source["from"]]
                input_label = {"from": source["from"]}
            else:
                input_path = os.path.join(models, source)
                input_label = source
                if not os.path.exists(input_path):
                    print(f"skipping {name}: {input_path} is not there", file=sys.stderr)
                    continue
            out = os.path.join(tmp, name + ".gguf")
            cmd = [os.path.join(bin_dir, "llama-quantize"), *options, input_path, out, ftype, "2"]
            run = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
            if run.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed:\n{run.stdout}\n{run.stderr}")
            outputs[name] = out
            if commit is None:
                # llama-quantize prints "version: ... (build N, commit HASH)" before it starts
                commit = next((l for l in (run.stdout + run.stderr).splitlines() if "commit" in l), "unknown")
            with open(out, "rb") as f:
                file_sha = hashlib.sha256(f.read()).hexdigest()
            tensors, keys = tensor_table(out)
            results[name] = {"input": input_label, "options": options, "type": ftype,
                             "file_sha256": file_sha, "file_size": os.path.getsize(out), "metadata_keys": keys,
                             "tensors": tensors}
            print(f"{name}: {os.path.getsize(out)} bytes, {file_sha[:16]}", file=sys.stderr)
    if prefixes and os.path.exists(sys.argv[1]):
        with open(sys.argv[1]) as f:
            old = json.load(f)
        if commit and old["llama_cpp"] != commit.strip():
            sys.exit(f"the file was recorded with {old['llama_cpp']!r}, this llama-quantize is {commit.strip()!r}")
        commit = old["llama_cpp"]
        merged = {k: v for k, v in old["jobs"].items() if k not in results}
        merged.update(results)
        results = merged
    write_jobs(sys.argv[1], [f' "llama_cpp": {json.dumps((commit or "unknown").strip())},', ' "threads": 2,'],
               results)


def write_jobs(path, header, jobs):
    """Writes {header..., "jobs": {...}} with one tensor per line, which keeps the file small and its diffs
    readable (also used by llama_export_lora_goldens.py)."""
    lines = ["{", *header, ' "jobs": {']
    for i, (name, job) in enumerate(jobs.items()):
        head = {k: v for k, v in job.items() if k != "tensors"}
        lines.append(f"  {json.dumps(name)}: {json.dumps(head)[:-1]}, \"tensors\": [")
        lines.extend(f"   {json.dumps(t)}" + ("," if j + 1 < len(job["tensors"]) else "")
                     for j, t in enumerate(job["tensors"]))
        lines.append("  ]}" + ("," if i + 1 < len(jobs) else ""))
    lines += [" }", "}"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
