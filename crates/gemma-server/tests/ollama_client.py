"""Drives a running gemma-server with the official `ollama` package. Usage: ollama_client.py BASE_URL API_KEY

Prints one line per check and exits non-zero on the first failure. Run by tests/ollama_python.rs."""
import json
import sys

try:
    import ollama
except ImportError:
    print("the `ollama` Python package is missing: run `python3 -m pip install ollama`", file=sys.stderr)
    sys.exit(3)

base, key = sys.argv[1], sys.argv[2]
client = ollama.Client(host=base, headers={"Authorization": f"Bearer {key}"}, timeout=300)

# The model list, the running models and the model's details.
models = client.list().models
assert len(models) == 1, models
model = models[0].model
assert model.endswith(":latest") and models[0].size > 0 and models[0].details.format == "gguf", models[0]
running = client.ps().models
assert [m.model for m in running] == [model] and running[0].context_length > 0, running
show = client.show(model)
assert show.details.family == "gemma3" and show.capabilities == ["completion"], show
assert show.modelinfo["general.architecture"] == "gemma3", show.modelinfo
assert "start_of_turn" in show.template
print("list ok", model)

# Generate, plain and streamed (greedy: the same text both ways), and continued with its context.
options = {"temperature": 0, "num_predict": 12}
r = client.generate(model=model, prompt="Name three colours.", options=options)
assert r.response and r.done and r.done_reason in ("stop", "length"), r
assert r.eval_count > 0 and r.prompt_eval_count > 0 and r.total_duration > 0, r
assert r.context and r.created_at, r
pieces = list(client.generate(model=model, prompt="Name three colours.", options=options, stream=True))
assert "".join(p.response for p in pieces) == r.response, pieces
assert pieces[-1].done and pieces[-1].eval_count == r.eval_count and not any(p.done for p in pieces[:-1])
more = client.generate(model=model, prompt="And three more?", context=r.context, options=options)
assert more.response and more.prompt_eval_count > len(r.context), more
print("generate ok", repr(r.response))

# Chat, plain and streamed, with a system message and a JSON schema.
messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
c = client.chat(model=model, messages=messages, options=options)
assert c.message.role == "assistant" and c.message.content and c.done, c
streamed = list(client.chat(model=model, messages=messages, options=options, stream=True))
assert "".join(p.message.content for p in streamed) == c.message.content, streamed
assert streamed[-1].done and streamed[-1].done_reason == c.done_reason
schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
j = client.chat(model=model, messages=messages, format=schema, options={"temperature": 0, "num_predict": 40})
assert isinstance(json.loads(j.message.content)["city"], str), j.message.content
print("chat ok", repr(c.message.content))

# Errors arrive as ollama.ResponseError with the status and ollama's message.
try:
    client.chat(model=model, messages=messages, tools=[{"type": "function", "function": {"name": "f"}}])
    raise AssertionError("tools were accepted")
except ollama.ResponseError as e:
    assert e.status_code == 400 and "does not support tools" in e.error, (e.status_code, e.error)
try:
    client.embed(model=model, input="x")
    raise AssertionError("a generative model made embeddings")
except ollama.ResponseError as e:
    assert e.status_code == 400 and "embedding" in e.error, (e.status_code, e.error)
try:
    ollama.Client(host=base).list()
    raise AssertionError("no key was needed")
except ollama.ResponseError as e:
    assert e.status_code == 401 and isinstance(e.error, str), (e.status_code, e.error)
print("errors ok")
