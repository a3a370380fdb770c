#!/usr/bin/env python3
"""Records llama-server's answers on its native side endpoints, for gemma-server's tests
(crates/gemma-server/tests/llama_server_api.rs): `GET/POST /props`, `GET /slots`, `POST /slots/{id}`,
`POST /apply-template`, `POST /tokenize` / `/detokenize`, and what it answers on this model for the routes it
cannot serve (`/infill`, `/rerank` and its aliases, `/embedding`).

It starts llama-server (built beside the project, never committed) on loopback with Gemma 3 270M, several
times with different flags:

    python3 scripts/llama_server_native_goldens.py \
        [--llama-dir ~/.cache/gemma-anchors/llama.cpp] [--models-dir ~/.cache/gemma-rs/models] \
        [--out testdata/goldens/llama_server_native.json]

  * `default`: no extra flags. The props, the slots before and after a completion, the error answers.
  * `gemma_template`: `--chat-template-file` with Google's Gemma 3 template (the one gemma-server renders;
    the 270M file carries none, so llama-server would otherwise fall back to ChatML). `/apply-template`
    with the default `add_generation_prompt`, with it off, and with a final assistant message (which
    llama-server continues by default).
  * `no_slots` (`--no-slots`) and `props` (`--props`): what those switches change.
  * `slot_save` (`--slot-save-path`, a temporary directory): a completion, then its slot saved, erased,
    restored, and the error answers of the slot actions.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

GEMMA = "gemma-3-270m-q4_k_m.gguf"
HERE = os.path.dirname(os.path.abspath(__file__))


def chat_goldens_module():
    spec = importlib.util.spec_from_file_location("chat_goldens", os.path.join(HERE, "llama_chat_template_goldens.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call(port, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return {"status": r.status, "body": json.load(r)}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": json.load(e)}


def run(server_bin, model_path, flags, port, record):
    cmd = [server_bin, "-m", model_path, *flags, "--host", "127.0.0.1", "--port", str(port), "-c", "2048", "-t", "2",
           "-np", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        chat_goldens_module().wait_ready(port, proc)  # the same readiness loop
        return record(port)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


TOKENIZE = [
    {"content": "Hello world"},
    {"content": "Hello world", "add_special": True},
    {"content": "Hello <start_of_turn> á 日本 👋", "with_pieces": True},
    {"content": "<start_of_turn>x", "parse_special": False, "with_pieces": True},
    {"content": "\U0010FFFD\u0600", "with_pieces": True},
    {"content": ["Hi", 106, "there"], "add_special": True},
    {"content": [106, "Hi"], "add_special": True},
    {},
]
DETOKENIZE = [
    {"tokens": [2, 9259, 1902, 106]},
    {"tokens": [482, 381, 429, 427]},
    {"tokens": []},
    {},
]
NOT_SERVED = [
    ("POST", "/infill", {"input_prefix": "def f(", "input_suffix": "):\n    pass\n"}),
    ("POST", "/rerank", {"query": "a", "documents": ["b"]}),
    ("POST", "/reranking", {"query": "a", "documents": ["b"]}),
    ("POST", "/v1/rerank", {"query": "a", "documents": ["b"]}),
    ("POST", "/v1/reranking", {"query": "a", "documents": ["b"]}),
    ("POST", "/embedding", {"content": "hello"}),
    ("POST", "/props", {}),
    ("POST", "/slots/0?action=save", {"filename": "slot0.bin"}),
    ("POST", "/slots/0?action=restore", {"filename": "slot0.bin"}),
    ("POST", "/slots/0?action=erase", {}),
    ("POST", "/lora-adapters", []),
    ("POST", "/lora-adapters", [{"id": 0, "scale": 1.0}]),
    ("POST", "/lora-adapters", {}),
]


def record_default(port):
    out = {"props": call(port, "GET", "/props"), "slots_fresh": call(port, "GET", "/slots")}
    out["completion"] = call(port, "POST", "/completion", {"prompt": "Hi", "n_predict": 3, "temperature": 0})
    out["slots_after"] = call(port, "GET", "/slots")
    out["slots_fail_on_no_slot"] = call(port, "GET", "/slots?fail_on_no_slot=1")
    out["health_v1"] = call(port, "GET", "/v1/health")
    out["models"] = call(port, "GET", "/models")
    out["lora_adapters"] = call(port, "GET", "/lora-adapters")
    out["tokenize"] = [{"request": b, "response": call(port, "POST", "/tokenize", b)} for b in TOKENIZE]
    out["detokenize"] = [{"request": b, "response": call(port, "POST", "/detokenize", b)} for b in DETOKENIZE]
    out["not_served"] = [{"method": m, "path": p, "request": b, "response": call(port, m, p, b)}
                         for m, p, b in NOT_SERVED]
    return out


def record_templates(port, conversations):
    cases = []
    for name, messages in conversations:
        for agp in (None, False):
            body = {"messages": messages}
            if agp is not None:
                body["add_generation_prompt"] = agp
            cases.append({"name": name, "request": body, "response": call(port, "POST", "/apply-template", body)})
    extra = [
        ("continues_untrimmed_assistant", {"messages": [{"role": "user", "content": "Hi"},
                                                        {"role": "assistant", "content": "  Yes, "}]}),
        ("developer_is_system", {"messages": [{"role": "developer", "content": "Be brief."},
                                              {"role": "user", "content": "Hi"}]}),
        ("no_messages", {}),
        ("user_without_content", {"messages": [{"role": "user"}]}),
    ]
    for name, body in extra:
        cases.append({"name": name, "request": body, "response": call(port, "POST", "/apply-template", body)})
    return cases


def record_slot_save(port):
    out = {"completion": call(port, "POST", "/completion",
                              {"prompt": "The capital of France is", "n_predict": 4, "temperature": 0})}
    steps = [
        ("save", "/slots/0?action=save", {"filename": "a.bin"}),
        ("erase", "/slots/0?action=erase", {}),
        ("restore", "/slots/0?action=restore", {"filename": "a.bin"}),
        ("restore_missing", "/slots/0?action=restore", {"filename": "missing.bin"}),
        ("bad_filename", "/slots/0?action=save", {"filename": "../x.bin"}),
        ("bad_slot_id", "/slots/abc?action=save", {"filename": "b.bin"}),
        ("bad_action", "/slots/0?action=fly", {}),
        ("no_action", "/slots/0", {}),
    ]
    for name, path, body in steps:
        out[name] = call(port, "POST", path, body)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-dir", default=os.path.expanduser("~/.cache/gemma-anchors/llama.cpp"))
    ap.add_argument("--models-dir", default=os.path.expanduser("~/.cache/gemma-rs/models"))
    ap.add_argument("--out", default="testdata/goldens/llama_server_native.json")
    ap.add_argument("--port", type=int, default=18094)
    args = ap.parse_args()

    chat = chat_goldens_module()
    server_bin = os.path.join(args.llama_dir, "build", "bin", "llama-server")
    model = os.path.join(args.models_dir, GEMMA)
    out = {
        "llama_cpp": chat.llama_cpp_version(server_bin, args.llama_dir),
        "how": "llama-server -m gemma-3-270m-q4_k_m.gguf -c 2048 -np 1 plus each run's flags; see "
               "scripts/llama_server_native_goldens.py",
    }
    print("recording the default run", file=sys.stderr)
    out["default"] = run(server_bin, model, [], args.port, record_default)
    with tempfile.TemporaryDirectory() as tmp:
        official = os.path.join(tmp, "gemma3_official.jinja")
        with open(official, "w", encoding="utf-8") as f:
            f.write(chat.GEMMA3_OFFICIAL_TEMPLATE)
        print("recording /apply-template with Google's Gemma 3 template", file=sys.stderr)
        out["gemma_template"] = run(server_bin, model, ["--chat-template-file", official], args.port,
                                    lambda port: record_templates(port, chat.CONVERSATIONS))
    print("recording --no-slots and --props", file=sys.stderr)
    out["no_slots"] = run(server_bin, model, ["--no-slots"], args.port, lambda port: call(port, "GET", "/slots"))
    out["props_enabled"] = run(server_bin, model, ["--props"], args.port, lambda port: call(port, "POST", "/props", {}))
    with tempfile.TemporaryDirectory() as tmp:
        print("recording --slot-save-path", file=sys.stderr)
        out["slot_save"] = run(server_bin, model, ["--slot-save-path", tmp + "/"], args.port, record_slot_save)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
