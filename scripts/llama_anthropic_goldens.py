#!/usr/bin/env python3
"""Records llama-server's answers on the Anthropic Messages API (`POST /v1/messages`,
`POST /v1/messages/count_tokens`), for gemma-server's tests (crates/gemma-server/tests/anthropic_api.rs).

It starts llama-server (built beside the project, never committed) on loopback with Gemma 3 270M and Google's
Gemma 3 template (`--chat-template-file`: the 270M file carries none, and gemma-server renders that template),
then sends a few greedy requests, plain and streamed, and the bodies it refuses:

    python3 scripts/llama_anthropic_goldens.py \
        [--llama-dir ~/.cache/gemma-anchors/llama.cpp] [--models-dir ~/.cache/gemma-rs/models] \
        [--out testdata/goldens/llama_anthropic.json]

A streamed answer is recorded as its list of SSE events, each `{"event": name, "data": parsed JSON}`.
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


def parse_sse(text):
    events, name = [], None
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            events.append({"event": name, "data": json.loads(line[len("data: "):])})
            name = None
    return events


def call(port, path, body, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            text = r.read().decode()
            if r.headers.get("Content-Type", "").startswith("text/event-stream"):
                return {"status": r.status, "events": parse_sse(text)}
            return {"status": r.status, "body": json.loads(text)}
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        try:
            return {"status": e.code, "body": json.loads(text)}
        except json.JSONDecodeError:
            return {"status": e.code, "text": text}


# Gemma 3 270M's greedy answers have near ties (top logprobs within 0.1) where llama-server's batched prompt
# and gemma-rs may pick differently; these requests were chosen for answers free of them over their length.
USER = [{"role": "user", "content": "Hello! How are you?"}]
MULTI = [
    {"role": "user", "content": "Hello! How are you?"},
    {"role": "assistant", "content": "I am fine, thank you."},
    {"role": "user", "content": [{"type": "text", "text": "Tell me a story about a dragon."}]},
]
COUNT = [{"role": "user", "content": "Count from one to ten."}]

# Greedy generations: each is asked plain and streamed.
GENERATIONS = [
    ("plain", {"max_tokens": 24, "temperature": 0, "messages": USER}),
    ("system_string", {"max_tokens": 24, "temperature": 0, "system": "You are a pirate.", "messages": USER}),
    ("system_blocks", {"max_tokens": 24, "temperature": 0,
                       "system": [{"type": "text", "text": "You are a helpful "}, {"type": "text", "text": "assistant."}],
                       "messages": [{"role": "user", "content": "Write a short poem about the sea."}]}),
    ("multi_turn", {"max_tokens": 24, "temperature": 0, "messages": MULTI}),
    # Gemma's template trims each text block and joins them with nothing between.
    ("text_blocks", {"max_tokens": 16, "temperature": 0,
                     "messages": [{"role": "user", "content": [{"type": "text", "text": "Tell me a story"},
                                                               {"type": "text", "text": "about a dragon."}]}]}),
    ("stop_sequence", {"max_tokens": 24, "temperature": 0, "stop_sequences": ["integer", "blue"], "messages": COUNT}),
    ("top_k_top_p", {"max_tokens": 12, "temperature": 0, "top_k": 1, "top_p": 0.5, "messages": COUNT}),
    ("prefilled_assistant", {"max_tokens": 12, "temperature": 0,
                             "messages": [{"role": "user", "content": "What is the capital of France?"},
                                          {"role": "assistant", "content": "The capital of France is"}]}),
]

COUNT_TOKENS = [
    ("plain", {"messages": USER}),
    ("system", {"system": "You are a pirate.", "messages": USER}),
    ("multi_turn", {"messages": MULTI}),
]

# What llama-server does with bodies Anthropic's API refuses or it cannot serve as asked.
ERRORS = [
    # Anthropic requires max_tokens; llama-server asks for 4096 then (a stop sequence keeps it short).
    ("no_max_tokens", "/v1/messages", {"temperature": 0, "stop_sequences": ["\n"],
                                       "messages": [{"role": "user", "content": "Tell me a story about a dragon."}]}),
    ("no_messages", "/v1/messages", {"max_tokens": 4}),
    ("messages_not_list", "/v1/messages", {"max_tokens": 4, "messages": "hi"}),
    ("bad_temperature_type", "/v1/messages", {"max_tokens": 4, "temperature": "hot", "messages": USER}),
    ("count_no_messages", "/v1/messages/count_tokens", {}),
    ("tools", "/v1/messages", {"max_tokens": 4, "messages": USER,
                               "tools": [{"name": "f", "input_schema": {"type": "object"}}]}),
]


def record(port):
    out = {"generations": [], "count_tokens": [], "errors": []}
    for name, body in GENERATIONS:
        plain = call(port, "/v1/messages", body)
        streamed = call(port, "/v1/messages", {**body, "stream": True})
        out["generations"].append({"name": name, "request": body, "response": plain, "stream": streamed})
    for name, body in COUNT_TOKENS:
        out["count_tokens"].append({"name": name, "request": body,
                                    "response": call(port, "/v1/messages/count_tokens", body)})
    for name, path, body in ERRORS:
        out["errors"].append({"name": name, "path": path, "request": body, "response": call(port, path, body)})
    out["errors"].append({"name": "invalid_json", "path": "/v1/messages", "raw": "{not json",
                          "response": call(port, "/v1/messages", None, raw=b"{not json")})
    return out


def main():
    chat_goldens_module().record_with_gemma3_template(
        "testdata/goldens/llama_anthropic.json",
        18097,
        "llama-server -m gemma-3-270m-q4_k_m.gguf --chat-template-file <Gemma 3's template> -c 2048 -np 1; "
        "see scripts/llama_anthropic_goldens.py",
        record,
    )


if __name__ == "__main__":
    main()
