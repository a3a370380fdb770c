"""Drives a running gemma-server's Responses API with the official `openai` package.
Usage: responses_client.py BASE_URL API_KEY

Prints one line per check and exits non-zero on the first failure. Run by tests/responses_api.rs."""
import sys

try:
    import openai
except ImportError:
    print("the `openai` Python package is missing: run `python3 -m pip install openai`", file=sys.stderr)
    sys.exit(3)

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=300)
model = client.models.list().data[0].id

# Plain and streamed (greedy: the same text both ways).
r = client.responses.create(model=model, instructions="Be brief.", input="Say hi.", max_output_tokens=12,
                            temperature=0)
assert r.object == "response" and r.status == "completed" and r.id.startswith("resp_"), r
text = r.output_text
assert text and r.output[0].type == "message" and r.output[0].content[0].type == "output_text", r
assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0, r.usage
assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens, r.usage
print("create ok", repr(text))

events = list(client.responses.create(model=model, instructions="Be brief.", input="Say hi.", max_output_tokens=12,
                                      temperature=0, stream=True))
kinds = [e.type for e in events]
assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed", kinds
streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
assert streamed == text, (streamed, text)
done = events[-1].response
assert done.output_text == text and done.usage.output_tokens == r.usage.output_tokens, done
print("stream ok", kinds[:5], "...", kinds[-4:])

# A conversation as a list of input items, and its token count.
items = [
    {"role": "user", "content": [{"type": "input_text", "text": "Hello. Can you count?"}]},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Yes, I can count."}]},
    {"role": "user", "content": "Count from one to five."},
]
r = client.responses.create(model=model, input=items, max_output_tokens=8, temperature=0)
assert r.output_text, r
count = client.responses.input_tokens.count(model=model, input=items)
assert count.input_tokens == r.usage.input_tokens, (count, r.usage)
print("items ok", count.input_tokens)

# What the server cannot honour is a BadRequestError naming the field.
try:
    client.responses.create(model=model, input="Hi", previous_response_id="resp_123", max_output_tokens=4)
    raise AssertionError("previous_response_id was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "previous_response_id" in str(e), e
try:
    client.responses.create(model=model, input="Hi", max_output_tokens=4,
                            tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}])
    raise AssertionError("tools were accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "tools" in str(e), e
print("400 ok")
try:
    openai.OpenAI(base_url=base + "/v1", api_key="wrong-key", max_retries=0).responses.create(model=model, input="Hi")
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401
print("401 ok")
print("all ok")
