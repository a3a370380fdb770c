#!/usr/bin/env python3
"""Records llama.cpp's EmbeddingGemma embeddings for crates/gemma-core/tests/embedding_parity.rs.

llama-server (built beside the project, never committed) runs the GGUF that `gemma convert` writes from the
pulled sentence-transformers folder, so this checks both that llama.cpp loads our conversion and what it
computes. Inputs are the texts of testdata/goldens/embeddinggemma_300m_ref_f64.json, sent as llama.cpp's own
tokenization (checked against the reference ids); the embeddings are llama.cpp's pooled, dense-projected and
L2-normalised vectors.

    gemma convert -i ~/.cache/gemma-rs/models/embeddinggemma-300m -o /tmp/eg-f32.gguf
    llama-server -m /tmp/eg-f32.gguf --embeddings --host 127.0.0.1 --port 18098 -t 2 -c 2048 -b 2048 -ub 2048
    python3 scripts/llama_embedding_goldens.py http://127.0.0.1:18098 \
        testdata/goldens/embeddinggemma_300m_ref_f64.json testdata/goldens/embeddinggemma_300m_llama.json
"""
import json
import sys
import urllib.request


def post(server, path, body):
    req = urllib.request.Request(server + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def main():
    server, ref_path, out_path = sys.argv[1:4]
    ref = json.load(open(ref_path))
    out = {"model": ref["model"], "generator": "scripts/llama_embedding_goldens.py (llama-server, F32 GGUF "
           "written by `gemma convert`)", "texts": []}
    for t in ref["texts"]:
        ids = post(server, "/tokenize", {"content": t["text"], "add_special": True, "parse_special": True})["tokens"]
        if ids != t["ids"]:
            sys.exit(f"llama.cpp tokenizes {t['text']!r} as {ids}, the reference as {t['ids']}")
        res = post(server, "/v1/embeddings", {"input": [ids]})
        emb = res["data"][0]["embedding"]
        out["texts"].append({"text": t["text"], "ids": ids, "embedding": [float(f"{x:.7g}") for x in emb]})
        print(len(ids), "tokens", emb[:3], file=sys.stderr)
    json.dump(out, open(out_path, "w"), indent=None, ensure_ascii=False)


if __name__ == "__main__":
    main()
