#!/usr/bin/env python3
"""The cost of a LoRA adapter: `gemma bench` pp/tg without and with `--lora`, next to llama.cpp without and with
the same `--lora`, in one run on the same machine, 2 threads (docs/lora.md has the numbers).

llama-bench has no `--lora` flag, so llama.cpp is timed through llama-server's own timings (`prompt_per_second`,
`predicted_per_second` of `/completion`, prompt cache off, EOS ignored), started once without and once with the
adapter. The adapter is the one `scripts/llama_lora_goldens.py` writes (rank 8 on attn_q, attn_v, ffn_down).

    LD_LIBRARY_PATH=~/.cache/gemma-anchors/llama.cpp/build/bin \
        python3 scripts/bench_lora_vs_llama.py target/release/gemma ~/.cache/gemma-rs/models/gemma-3-270m-q4_k_m.gguf
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import llama_lora_goldens as goldens  # noqa: E402

PP, TG, REPS, ROUNDS, THREADS, PORT = 256, 64, 3, 2, 2, 18095


def gemma_bench(gemma, model, extra):
    out = subprocess.run([gemma, "bench", "-m", model, "-p", str(PP), "-n", str(TG), "-r", str(REPS), "-t",
                          str(THREADS), "-o", "json", *extra], capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] == PP and r["n_gen"] == 0)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] == TG and r["n_prompt"] == 0)
    return pp, tg


def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def llama_server(model, extra):
    bin_dir = os.path.expanduser("~/.cache/gemma-anchors/llama.cpp/build/bin")
    server = subprocess.Popen([os.path.join(bin_dir, "llama-server"), "-m", model, "--host", "127.0.0.1", "--port",
                               str(PORT), "-t", str(THREADS), "-c", "1024", "-np", "1", *extra],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=5) as r:
                    if json.load(r).get("status") == "ok":
                        break
            except Exception:
                time.sleep(0.5)
        # A prompt of PP tokens from the vocabulary's ordinary range, the same every time.
        prompt = [2] + [1000 + (i * 7919) % 20000 for i in range(PP - 1)]
        pps, tgs = [], []
        for _ in range(REPS + 1):
            t = post("/completion", {"prompt": prompt, "n_predict": TG, "temperature": 0, "cache_prompt": False,
                                     "ignore_eos": True})["timings"]
            pps.append(t["prompt_per_second"])
            tgs.append(t["predicted_per_second"])
        return statistics.mean(pps[1:]), statistics.mean(tgs[1:])  # the first is a warm-up
    finally:
        server.terminate()
        server.wait()


def main():
    gemma, model = sys.argv[1:3]
    print(f"| round | engine | adapter | pp{PP} t/s | tg{TG} t/s |")
    print("|---|---|---|---|---|")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        adapter = os.path.join(tmp, "lora.gguf")
        goldens.write_adapter(adapter)
        # Rounds of all four, so that a busy spell of the machine shows up as a round apart.
        for r in range(ROUNDS):
            rows = [
                ("gemma", "base", gemma_bench(gemma, model, [])),
                ("gemma", "lora", gemma_bench(gemma, model, ["--lora", adapter])),
                ("llama.cpp", "base", llama_server(model, [])),
                ("llama.cpp", "lora", llama_server(model, ["--lora", adapter])),
            ]
            for engine, kind, (pp, tg) in rows:
                print(f"| {r + 1} | {engine} | {kind} | {pp:.1f} | {tg:.1f} |", flush=True)
            ratios.append(rows)
    for r, rows in enumerate(ratios):
        for engine in ("gemma", "llama.cpp"):
            (bpp, btg), (lpp, ltg) = [x[2] for x in rows if x[0] == engine]
            print(f"round {r + 1} {engine}: with the adapter pp x{lpp / bpp:.3f}, tg x{ltg / btg:.3f}")
        (gpp, gtg), (lpp, ltg) = rows[1][2], rows[3][2]
        print(f"round {r + 1} with the adapter, gemma / llama.cpp: pp {gpp / lpp:.2f}x, tg {gtg / ltg:.2f}x")


if __name__ == "__main__":
    main()
