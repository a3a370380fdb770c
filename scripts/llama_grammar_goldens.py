#!/usr/bin/env python3
"""Records llama-server's greedy output under grammars and JSON schemas on the real model, for
crates/gemma-core/tests/grammar_real.rs.

Each case is a Gemma chat prompt and a GBNF grammar (`grammar`) or a JSON Schema (`json_schema`, turned into a
grammar by llama-server itself). llama-server (built beside the project, never committed) generates greedily
(temperature 0) with its grammar sampler; the prompt ids come from its /tokenize.

    llama-server -m gemma-3-270m-q4_k_m.gguf --host 127.0.0.1 --port 18099 -t 2 -c 4096 -fa on
    python3 scripts/llama_grammar_goldens.py http://127.0.0.1:18099 testdata/goldens/gemma3_270m_llama_grammar.json
"""
import json
import sys
import urllib.request

N = 48
CASES = [
    ("yes or no", "Is the sky blue? Answer yes or no.", {"grammar": 'root ::= ("yes" | "no")'}),
    ("sum", "What is 12 plus 30?", {"grammar": 'root ::= [0-9]+ " + " [0-9]+ " = " [0-9]+'}),
    ("bullet list", "List three fruits.", {"grammar": 'root ::= item{3}\nitem ::= "- " [^\\n]+ "\\n"'}),
    ("hiragana", "日本の首都はどこですか?", {"grammar": "root ::= [ぁ-ゖ]+ \"。\""}),
    ("any json", "Describe a cat as JSON.", {"json_schema": {}}),
    ("person", "Make up a person.", {"json_schema": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
        "required": ["name", "age"], "additionalProperties": False}}),
    ("colour enum", "What colour is grass?", {"json_schema": {"enum": ["red", "green", "blue"]}}),
    ("primes", "Give me some prime numbers.", {"json_schema": {
        "type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 5}}),
    ("capitalised word", "Name a planet.", {"json_schema": {"type": "string", "pattern": "^[A-Z][a-z]+$"}}),
    ("optional fields", "Describe a book.", {"json_schema": {
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 40}, "year": {"type": "integer"},
                       "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}},
        "required": ["title"]}}),
]


def post(server, path, body):
    req = urllib.request.Request(server + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)


def main():
    server, out_path = sys.argv[1:3]
    out = []
    for name, question, constraint in CASES:
        text = f"<start_of_turn>user\n{question}<end_of_turn>\n<start_of_turn>model\n"
        ids = post(server, "/tokenize", {"content": text, "add_special": True, "parse_special": True})["tokens"]
        res = post(server, "/completion", dict(constraint, prompt=ids, n_predict=N, temperature=0.0,
                                               return_tokens=True, cache_prompt=False))
        out.append(dict(constraint, name=name, prompt_ids=ids, gen_ids=res["tokens"], gen_text=res["content"],
                        stop_type=res.get("stop_type")))
        print(name, repr(res["content"]), res.get("stop_type"), file=sys.stderr)
    json.dump(out, open(out_path, "w"), indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
