"""Embeds texts on a running gemma-server (with an embedding model) through the official `openai` package.
Usage: openai_embeddings_client.py BASE_URL TEXT...

Prints one JSON object: {"model", "embeddings": [[floats] per TEXT], "prompt_tokens", "short": the first
TEXT at dimensions=256}. Run by tests/embeddings.rs, which compares the vectors with the goldens."""
import json
import struct
import sys

try:
    import openai
except ImportError:
    print("the `openai` Python package is missing: run `python3 -m pip install openai`", file=sys.stderr)
    sys.exit(3)

base, texts = sys.argv[1], sys.argv[2:]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
model = client.models.list().data[0].id

# The package asks for base64 unless told otherwise, and decodes it itself.
default = client.embeddings.create(model=model, input=texts)
assert default.object == "list", default
assert [d.index for d in default.data] == list(range(len(texts))), default.data
assert all(d.object == "embedding" for d in default.data)
assert default.usage.prompt_tokens == default.usage.total_tokens > 0, default.usage
vectors = [list(map(float, d.embedding)) for d in default.data]


def as_f32(xs):
    """The f32 values of `xs` (the JSON floats are the shortest text of each f32, read back as f64)."""
    return list(struct.unpack(f"<{len(xs)}f", struct.pack(f"<{len(xs)}f", *xs)))


# Asked for floats: the same f32 numbers.
floats = client.embeddings.create(model=model, input=texts, encoding_format="float")
assert [as_f32(d.embedding) for d in floats.data] == vectors, "float and base64 encodings differ"

short = client.embeddings.create(model=model, input=texts[0], dimensions=256).data[0].embedding

# A bad request is the package's BadRequestError.
try:
    client.embeddings.create(model=model, input=texts[0], dimensions=0)
    raise AssertionError("dimensions=0 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400, e

print(
    json.dumps(
        {
            "model": default.model,
            "embeddings": vectors,
            "prompt_tokens": default.usage.prompt_tokens,
            "short": list(map(float, short)),
        }
    )
)
