"""Drives a running gemma-server with the official `openai` package. Usage: openai_client.py BASE_URL API_KEY

Prints one line per check and exits non-zero on the first failure. Run by tests/openai_python.rs."""
import sys

try:
    import openai
except ImportError:
    print("the `openai` Python package is missing: run `python3 -m pip install openai`", file=sys.stderr)
    sys.exit(3)

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=300)
model = client.models.list().data[0].id
print("model", model)

# Chat, plain and streamed (greedy: the same text both ways).
messages = [{"role": "user", "content": "Name three colours."}]
chat = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
text = chat.choices[0].message.content
assert text, chat
assert chat.choices[0].finish_reason in ("stop", "length"), chat
assert chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens > 0, chat.usage
streamed = "".join(
    c.choices[0].delta.content or ""
    for c in client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0, stream=True)
    if c.choices
)
assert streamed == text, (streamed, text)
print("chat ok", repr(text))

# Completions, plain and streamed, with usage in the stream.
comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
ctext = comp.choices[0].text
assert comp.usage.completion_tokens >= 1, comp.usage
chunks = list(
    client.completions.create(
        model=model,
        prompt="The capital of France is",
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
)
assert "".join(c.choices[0].text for c in chunks if c.choices) == ctext
usage = [c.usage for c in chunks if c.usage is not None]
assert len(usage) == 1 and usage[0].completion_tokens == comp.usage.completion_tokens, usage
assert chunks[-1].choices == [], "the usage chunk comes last, with no choices"
print("completions ok", repr(ctext))

# Stop strings end the text before them.
full = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0).choices[0].text
word = full.strip().split(",")[0].strip() or full.strip()[:1]
cut = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[word])
assert cut.choices[0].finish_reason == "stop" and word not in cut.choices[0].text, (full, word, cut)
print("stop ok", repr(full), "->", repr(cut.choices[0].text))

# n choices with a seed: reproducible, and numbered.
def sampled():
    r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=6, temperature=1.0, n=3, seed=7)
    return [c.text for c in sorted(r.choices, key=lambda c: c.index)]

first, again = sampled(), sampled()
assert len(first) == 3 and first == again, (first, again)
print("n+seed ok", first)

# Errors map to the package's exception classes.
try:
    openai.OpenAI(base_url=base + "/v1", api_key="wrong-key", max_retries=0).chat.completions.create(
        model=model, messages=messages, max_tokens=4
    )
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401
print("401 ok")
try:
    client.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=7000)
    raise AssertionError("temperature 7000 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "temperature" in str(e), e
print("400 bad request ok")
try:
    client.completions.create(model=model, prompt="word " * 5000, max_tokens=4)
    raise AssertionError("an over-long prompt was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "context" in str(e), e
print("400 over-long ok")
print("all ok")
