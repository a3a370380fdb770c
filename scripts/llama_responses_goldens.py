#!/usr/bin/env python3
"""Records llama-server's answers on the OpenAI Responses API (`POST /v1/responses`,
`POST /v1/responses/input_tokens`), for gemma-server's tests (crates/gemma-server/tests/responses_api.rs).

It starts llama-server (built beside the project, never committed) on loopback with Gemma 3 270M and
Google's Gemma 3 template (`--chat-template-file`; the 270M file carries none, and gemma-server renders that
template), then records greedy answers: a plain string input, one with `instructions`, a list of items
(a user message with an `input_text` part, an assistant `output_text` message, a user message with string
content), a developer message, the same streamed (the SSE `event:`/`data:` lines as sent), the token counts of
`/responses/input_tokens`, and the error answers of bodies it refuses:

    python3 scripts/llama_responses_goldens.py \
        [--llama-dir ~/.cache/gemma-anchors/llama.cpp] [--models-dir ~/.cache/gemma-rs/models] \
        [--out testdata/goldens/llama_responses.json]
"""
import importlib.util
import json
import os
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def chat_goldens_module():
    spec = importlib.util.spec_from_file_location("chat_goldens", os.path.join(HERE, "llama_chat_template_goldens.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def post(port, path, body, stream=False):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            if stream:
                return {"status": r.status, "events": parse_sse(r.read().decode("utf-8"))}
            return {"status": r.status, "body": json.load(r)}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": json.load(e)}


def parse_sse(text):
    """The stream as a list of {"event", "data"}: each blank-line-separated block's `event:` and `data:`."""
    events = []
    for block in text.split("\n\n"):
        event, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: "):])
        if event is not None or data is not None:
            events.append({"event": event, "data": data})
    return events


# `cache_prompt: false`: llama-server's greedy text otherwise depends on what its slot held before (a reused
# prefix is not recomputed); gemma-server ignores the field.
GREEDY = {"temperature": 0, "max_output_tokens": 24, "cache_prompt": False}
MULTI_INPUT = [
    {"type": "message", "role": "user",
     "content": [{"type": "input_text", "text": "Hello. Can you count?"}]},
    {"type": "message", "role": "assistant", "status": "completed",
     "content": [{"type": "output_text", "text": "Yes, I can count.", "annotations": []}]},
    {"role": "user", "content": "Count from one to five."},
]
CASES = [
    ("plain", {"input": "Translate 'cat' into French.", **GREEDY}),
    ("instructions", {"instructions": "Be brief.", "input": "Say hi.", **GREEDY}),
    ("multi_item", {"input": MULTI_INPUT, **GREEDY}),
    ("developer_item", {"input": [{"role": "developer", "content": "Be brief."},
                                  {"role": "user", "content": [{"type": "input_text", "text": "Say hi."}]}],
                        **GREEDY}),
]
ERRORS = [
    ("no_input", {"model": "x"}),
    ("previous_response_id", {"input": "Hi", "previous_response_id": "resp_123"}),
    ("input_number", {"input": 42}),
    ("unknown_item", {"input": [{"type": "mystery"}]}),
    ("input_file", {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
    ("bad_part_type", {"input": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}),
    ("input_text_without_text", {"input": [{"role": "user", "content": [{"type": "input_text"}]}]}),
    ("assistant_without_type", {"input": [{"role": "assistant", "content": "Hi"}]}),
    ("refusal_part", {"input": [{"role": "user", "content": "Hi"},
                                {"type": "message", "role": "assistant",
                                 "content": [{"type": "refusal", "refusal": "No."}]}]}),
]


def record(port):
    out = {"cases": [], "errors": []}
    for name, body in CASES:
        case = {"name": name, "request": body, "response": post(port, "/v1/responses", body)}
        case["stream"] = post(port, "/v1/responses", {**body, "stream": True}, stream=True)
        case["input_tokens"] = post(port, "/v1/responses/input_tokens", body)
        out["cases"].append(case)
    out["alias"] = post(port, "/responses", CASES[0][1])
    out["alias_input_tokens"] = post(port, "/responses/input_tokens", CASES[0][1])
    for name, body in ERRORS:
        out["errors"].append({"name": name, "request": body, "response": post(port, "/v1/responses", body),
                              "input_tokens": post(port, "/v1/responses/input_tokens", body)})
    return out


def main():
    chat_goldens_module().record_with_gemma3_template(
        "testdata/goldens/llama_responses.json",
        18095,
        "llama-server -m gemma-3-270m-q4_k_m.gguf --chat-template-file <Gemma 3 template> -c 2048 -np 1; "
        "see scripts/llama_responses_goldens.py",
        record,
    )


if __name__ == "__main__":
    main()
