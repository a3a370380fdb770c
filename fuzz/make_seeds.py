#!/usr/bin/env python3
"""Writes small seed inputs for the fuzz targets into fuzz/corpus/<target>/ (which git ignores).

Text seeds come from the repository's testdata; the GGUF seeds need llama.cpp's `gguf` Python package
(put its gguf-py directory on PYTHONPATH) and are skipped without it. Run from the repository root:

    python3 fuzz/make_seeds.py
"""
import hashlib
import json
import os
import re
import struct

CORPUS = os.path.join("fuzz", "corpus")


def put(target, data, name=None):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    name = name or hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(CORPUS, target, name), "wb") as f:
        f.write(data)


def text_seeds():
    for c in json.load(open("testdata/grammar/gbnf_differential_cases.json")):
        accept = c.get("accept") or []
        text = accept[0] if accept and isinstance(accept[0], str) else ""
        put("gbnf", c["grammar"].encode() + b"\0" + text.encode())
    for f in ["testdata/grammar/json_schema_cases.json", "testdata/grammar/json_schema_differential_cases.json"]:
        for c in json.load(open(f)):
            s = c["schema"]
            put("json_schema", s if isinstance(s, str) else json.dumps(s))
    for c in json.load(open("testdata/grammar/llama_integration_cases.json")):
        if "grammar" in c["kind"]:
            put("gbnf", c["text"])
        elif "schema" in c["kind"]:
            put("json_schema", c["text"])
    src = open("crates/gemma-core/src/chat.rs").read()
    for m in re.finditer(r'const (\w+_TEMPLATE): &str = r#"(.*?)"#;', src, re.S):
        put("chat_template", m.group(2), m.group(1))


def server_request_seeds():
    """The request bodies of gemma-server's tests (the `json!` literals that are plain JSON), each sent to the
    endpoints that read its kind of body. The first byte is the endpoint's number in
    `gemma_server::fuzzing::ENDPOINTS`."""
    endpoints = {"prompt": [0, 2, 5, 9, 12], "messages": [1, 10, 13, 19, 20], "contents": [3, 4],
                 "input": [6, 11, 16, 17, 18], "content": [7, 14, 16], "requests": [8], "tokens": [15]}
    tests = "crates/gemma-server/tests"
    count = 0
    for name in sorted(os.listdir(tests)):
        if not name.endswith(".rs"):
            continue
        src = open(os.path.join(tests, name)).read()
        for m in re.finditer(r"json!\(", src):
            depth, i = 0, m.end()
            for j in range(i, len(src)):
                depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(src[j], 0)
                if depth < 0:
                    break
            text = re.sub(r"(\d)(u64|i64|u32|f32|f64|usize)\b", r"\1", src[i:j])
            try:
                body = json.loads(text)
            except ValueError:
                continue
            if not isinstance(body, dict):
                continue
            for key, numbers in endpoints.items():
                if key in body:
                    for e in numbers:
                        put("server_request", bytes([e]) + json.dumps(body).encode())
                        count += 1
    return count


def safetensors_seeds():
    def st(name, header, data):
        h = json.dumps(header).encode()
        put("safetensors", struct.pack("<Q", len(h)) + h + data, name)

    st("a", {"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
             "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}, bytes(22))
    st("b", {"x": {"dtype": "F16", "shape": [], "data_offsets": [0, 2]}}, bytes(2))


def gguf_seeds():
    try:
        import gguf
        import numpy as np
    except ImportError:
        print("gguf-py not found: no GGUF seeds")
        return
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "\u2581", "a", "b", "\u2581a",
              "ab", "<0x41>", "<0xC3>", "Hello", "\u2581world", "\u0120", "\u0120a", "12", "!"]
    for name, arch, model, tensors in [("gemma3_llama", "gemma3", "llama", True), ("llama_gpt2", "llama", "gpt2", True),
                                       ("notensors", "gemma3", "llama", False)]:
        path = os.path.join(CORPUS, "gguf", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        w = gguf.GGUFWriter(path, arch)
        w.add_uint32("general.alignment", 32)
        w.add_context_length(128)
        w.add_embedding_length(8)
        w.add_block_count(1)
        w.add_feed_forward_length(16)
        w.add_head_count(2)
        w.add_head_count_kv(1)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_tokenizer_model(model)
        w.add_token_list(tokens)
        w.add_token_scores([float(-i) for i in range(len(tokens))])
        w.add_token_types([3, 3, 3, 2, 4, 4] + [1] * (len(tokens) - 6))
        if model == "gpt2":
            w.add_token_merges(["\u0120 a", "a b"])
            w.add_string("tokenizer.ggml.pre", "default")
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_chat_template("{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n"
                            "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
        if tensors:
            w.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
            w.add_tensor("output_norm.weight", np.ones((8,), dtype=np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


text_seeds()
safetensors_seeds()
print(f"server_request: {server_request_seeds()} seeds")
gguf_seeds()
