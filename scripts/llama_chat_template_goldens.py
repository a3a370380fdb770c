#!/usr/bin/env python3
"""Records how llama.cpp renders and tokenizes chat conversations, for the chat-template tests.

For each model and template it starts llama-server (built beside the project, never committed) on loopback,
asks `POST /apply-template` for the rendered prompt of each conversation and
`POST /tokenize` (add_special and parse_special on, as the server does for a chat prompt) for its token ids:

    python3 scripts/llama_chat_template_goldens.py \
        [--llama-dir ~/.cache/gemma-anchors/llama.cpp] [--models-dir ~/.cache/gemma-rs/models] \
        [--out testdata/goldens/chat_templates.json]

Templates recorded:
  * `file`: the model file's own `tokenizer.chat_template` through llama.cpp's Jinja engine (`--jinja`). The
    Gemma 3 270M file carries no template, so llama.cpp falls back to ChatML for it.
  * `gemma3_official_jinja` (Gemma only): Google's published Gemma 3 instruction template (below, as released
    in the `tokenizer_config.json` of the Gemma 3 instruction-tuned checkpoints) given with
    `--chat-template-file`: what a Gemma GGUF that carries its template renders.
  * `llama_builtin_gemma` (Gemma only): llama.cpp's own non-Jinja "gemma" format (`--no-jinja --chat-template
    gemma`), which also merges a system message into the first user turn.

`--no-prefill-assistant` keeps a conversation that ends with an assistant message a plain render (otherwise
the server would switch to "continue the final message" mode and ignore add_generation_prompt).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

GEMMA = "gemma-3-270m-q4_k_m.gguf"
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Google's Gemma 3 instruction template (reference data for the renders, not used by the Rust code).
GEMMA3_OFFICIAL_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

SYSTEM = "You are a terse assistant. Answer in one sentence."
CONVERSATIONS = [
    ("single_user", [{"role": "user", "content": "What is the capital of France?"}]),
    ("system_user", [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a prime number."}]),
    (
        "multi_turn",
        [
            {"role": "user", "content": "Hi! Who are you?"},
            {"role": "assistant", "content": "I am a small language model."},
            {"role": "user", "content": "Tell me a fact about the Moon."},
        ],
    ),
    (
        "system_multi_turn",
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Count to three."},
            {"role": "assistant", "content": "One, two, three."},
            {"role": "user", "content": "Now backwards."},
        ],
    ),
    (
        "ends_with_assistant",
        [
            {"role": "user", "content": "Say yes."},
            {"role": "assistant", "content": "Yes."},
        ],
    ),
    (
        "whitespace_and_unicode",
        [
            {"role": "user", "content": "  Traduis « bonjour » en 日本語, s'il te plaît.\n\n"},
            {"role": "assistant", "content": "\nこんにちは 👋  "},
            {"role": "user", "content": "Merci !\n"},
        ],
    ),
    (
        # OpenAI's content parts (Anthropic's text blocks): llama.cpp hands them to a template that reads typed
        # content as a list, and joins them with newlines for one that reads strings only.
        "text_parts",
        [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": " Answer in French."}]},
            {"role": "user", "content": [{"type": "text", "text": "  Hello. "}, {"type": "text", "text": "Can you count?\n"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Un, deux."}]},
            {"role": "user", "content": [{"type": "text", "text": "Encore"}, {"type": "text", "text": "trois"}]},
        ],
    ),
]


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def wait_ready(port, proc):
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError("llama-server did not become ready")


def llama_cpp_version(server_bin, llama_dir):
    """The llama.cpp build the goldens come from: `llama-server --version`'s line and the source's commit."""
    version = subprocess.run([server_bin, "--version"], capture_output=True, text=True)
    version_line = next(
        (l.strip() for l in (version.stdout + version.stderr).splitlines() if l.startswith("version:")), "unknown"
    )
    commit = subprocess.run(["git", "-C", llama_dir, "rev-parse", "HEAD"], capture_output=True, text=True)
    return {"version": version_line, "commit": commit.stdout.strip() or "unknown"}


def with_gemma3_template_server(server_bin, model_path, port, record_fn):
    """Starts llama-server on loopback with Google's Gemma 3 template (`--chat-template-file`), one slot and
    a 2048-token context, returns `record_fn(port)` and stops the server."""
    with tempfile.TemporaryDirectory() as tmp:
        template = os.path.join(tmp, "gemma3_official.jinja")
        with open(template, "w", encoding="utf-8") as f:
            f.write(GEMMA3_OFFICIAL_TEMPLATE)
        cmd = [server_bin, "-m", model_path, "--chat-template-file", template, "--host", "127.0.0.1",
               "--port", str(port), "-c", "2048", "-t", "2", "-np", "1"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(port, proc)
            return record_fn(port)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def record_with_gemma3_template(default_out, default_port, how, record_fn):
    """The main of a goldens script whose answers come from one llama-server with Google's Gemma 3 template:
    reads `--llama-dir`, `--models-dir`, `--out`, `--port`, runs `record_fn(port)` and writes its answers (a dict)
    with the llama.cpp version and `how` to the output file."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-dir", default=os.path.expanduser("~/.cache/gemma-anchors/llama.cpp"))
    ap.add_argument("--models-dir", default=os.path.expanduser("~/.cache/gemma-rs/models"))
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--port", type=int, default=default_port)
    args = ap.parse_args()
    server_bin = os.path.join(args.llama_dir, "build", "bin", "llama-server")
    out = {"llama_cpp": llama_cpp_version(server_bin, args.llama_dir), "how": how}
    out.update(with_gemma3_template_server(server_bin, os.path.join(args.models_dir, GEMMA), args.port, record_fn))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out}", file=sys.stderr)


def record(server_bin, model_path, template_args, port):
    cmd = [server_bin, "-m", model_path, *template_args, "--no-prefill-assistant", "--host", "127.0.0.1",
           "--port", str(port), "-c", "2048", "-t", "2", "-np", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc)
        cases = []
        for name, messages in CONVERSATIONS:
            for add_generation_prompt in (True, False):
                body = {"messages": messages, "add_generation_prompt": add_generation_prompt}
                prompt = post(port, "/apply-template", body)["prompt"]
                ids = post(port, "/tokenize", {"content": prompt, "add_special": True, "parse_special": True})["tokens"]
                cases.append({
                    "name": name,
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                    "prompt": prompt,
                    "ids": ids,
                })
        return cases
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-dir", default=os.path.expanduser("~/.cache/gemma-anchors/llama.cpp"))
    ap.add_argument("--models-dir", default=os.path.expanduser("~/.cache/gemma-rs/models"))
    ap.add_argument("--out", default="testdata/goldens/chat_templates.json")
    ap.add_argument("--port", type=int, default=18093)
    args = ap.parse_args()

    server_bin = os.path.join(args.llama_dir, "build", "bin", "llama-server")
    out = {
        "llama_cpp": llama_cpp_version(server_bin, args.llama_dir),
        "how": "llama-server --no-prefill-assistant (plus each render's template flags); POST /apply-template, "
               "then POST /tokenize with add_special and parse_special",
        "renders": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        official = os.path.join(tmp, "gemma3_official.jinja")
        with open(official, "w", encoding="utf-8") as f:
            f.write(GEMMA3_OFFICIAL_TEMPLATE)
        runs = [
            (GEMMA, "file", ["--jinja"]),
            (GEMMA, "gemma3_official_jinja", ["--jinja", "--chat-template-file", official]),
            (GEMMA, "llama_builtin_gemma", ["--no-jinja", "--chat-template", "gemma"]),
            (SMOLLM2, "file", ["--jinja"]),
        ]
        for model, template, template_args in runs:
            print(f"recording {model} with template {template}", file=sys.stderr)
            cases = record(server_bin, os.path.join(args.models_dir, model), template_args, args.port)
            render = {"model": model, "template": template, "cases": cases}
            if template == "gemma3_official_jinja":
                render["template_source"] = GEMMA3_OFFICIAL_TEMPLATE
            out["renders"].append(render)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
