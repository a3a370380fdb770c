"""Drives a running gemma-server with the official `anthropic` package. Usage: anthropic_client.py BASE_URL API_KEY

Prints one line per check and exits non-zero on the first failure. Run by tests/anthropic_python.rs."""
import sys

try:
    import anthropic
except ImportError:
    print("the `anthropic` Python package is missing: run `python3 -m pip install anthropic`", file=sys.stderr)
    sys.exit(3)

base, key = sys.argv[1], sys.argv[2]
# The package sends the key as `x-api-key` and posts to BASE_URL/v1/messages.
client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=300)
model = "gemma"  # the server has one model and ignores the name
messages = [{"role": "user", "content": "Name three colours."}]
# Recent versions of the package have no `temperature` argument; the field goes in the body all the same.
greedy = {"temperature": 0}

# Plain, then streamed (greedy: the same text both ways).
msg = client.messages.create(model=model, max_tokens=12, messages=messages, extra_body=greedy)
assert msg.type == "message" and msg.role == "assistant", msg
assert msg.content and msg.content[0].type == "text" and msg.content[0].text, msg
text = msg.content[0].text
assert msg.stop_reason in ("end_turn", "max_tokens"), msg
assert msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0) > 0 and msg.usage.output_tokens > 0, msg
print("create ok", repr(text))

with client.messages.stream(model=model, max_tokens=12, messages=messages, extra_body=greedy) as stream:
    streamed = "".join(stream.text_stream)
    final = stream.get_final_message()
assert streamed == text, (streamed, text)
assert final.content[0].text == text and final.stop_reason == msg.stop_reason, final
assert final.usage.output_tokens == msg.usage.output_tokens, (final.usage, msg.usage)
print("stream ok", repr(streamed))

# A stop sequence taken from the text itself.
word = text.split()[1] if len(text.split()) > 1 else text.split()[0]
cut = client.messages.create(model=model, max_tokens=12, messages=messages, stop_sequences=[word],
                             extra_body=greedy)
assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == word, cut
assert word not in "".join(b.text for b in cut.content), cut
print("stop_sequence ok", repr(word))

count = client.messages.count_tokens(model=model, messages=messages)
assert count.input_tokens == msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0), (count, msg.usage)
print("count_tokens ok", count.input_tokens)

# Errors map to the package's exception classes.
try:
    anthropic.Anthropic(base_url=base, api_key="wrong-key", max_retries=0).messages.create(
        model=model, max_tokens=4, messages=messages
    )
    raise AssertionError("a wrong key was accepted")
except anthropic.AuthenticationError as e:
    assert e.status_code == 401 and e.body["error"]["type"] == "authentication_error", e.body
print("401 ok")
try:
    client.messages.create(model=model, max_tokens=4, messages=messages,
                           tools=[{"name": "f", "input_schema": {"type": "object"}}])
    raise AssertionError("tools were accepted")
except anthropic.BadRequestError as e:
    assert e.status_code == 400 and "tools" in str(e), e
print("400 tools ok")
print("all ok")
