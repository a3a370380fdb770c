// Tokens llama.cpp's own samplers pick from fixed pseudo-random logits, for
// crates/gemma-core/tests/sampling_llama_draws.rs. Built against the llama.cpp that
// ../shared/tools/build-llamacpp.sh leaves in ~/.cache/gemma-anchors (never committed):
//   A=~/.cache/gemma-anchors/llama.cpp
//   g++ -O2 -std=c++17 -I$A/include -I$A/ggml/include scripts/llama_sampler_goldens.cpp \
//       -L$A/build/bin -lllama -Wl,-rpath,$A/build/bin -o /tmp/sampler_goldens
//   /tmp/sampler_goldens > testdata/goldens/llama_sampler_draws.json
// Built without -march so no multiply-add is fused: the logits are exact in float either way.
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "llama.h"

static const int VOCAB = 2048;
static const int STEPS = 300;

// The same stream as the Rust test: 24 random bits per logit, scaled exactly into [-8, 8).
struct Logits {
    uint64_t s = 1;
    float next() {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        return (float)(uint32_t)(s >> 40) / 16777216.0f * 16.0f - 8.0f;
    }
};

static void run(const char * name, const char * params, std::function<llama_sampler *()> make, bool last) {
    llama_sampler * chain = make();
    Logits gen;
    std::vector<llama_token_data> data(VOCAB);
    printf("    {\"name\": \"%s\", \"params\": %s, \"ids\": [", name, params);
    for (int step = 0; step < STEPS; ++step) {
        for (int i = 0; i < VOCAB; ++i) {
            data[i] = llama_token_data{i, gen.next(), 0.0f};
        }
        llama_token_data_array cur = {data.data(), data.size(), -1, false};
        llama_sampler_apply(chain, &cur);
        printf("%s%d", step ? ", " : "", cur.data[cur.selected].id);
    }
    printf("]}%s\n", last ? "" : ",");
    llama_sampler_free(chain);
}

static llama_sampler * chain_of(std::vector<llama_sampler *> stages) {
    llama_sampler * c = llama_sampler_chain_init(llama_sampler_chain_default_params());
    for (auto * s : stages) llama_sampler_chain_add(c, s);
    return c;
}

int main() {
    printf("{\n  \"vocab\": %d,\n  \"steps\": %d,\n  \"cases\": [\n", VOCAB, STEPS);
    run("defaults", "{\"seed\": 42, \"temperature\": 0.8, \"top_k\": 40, \"top_p\": 0.95, \"min_p\": 0.05}", [] {
        return chain_of({llama_sampler_init_top_k(40), llama_sampler_init_top_p(0.95f, 0),
                         llama_sampler_init_min_p(0.05f, 0), llama_sampler_init_temp(0.8f), llama_sampler_init_dist(42)});
    }, false);
    run("full_vocabulary", "{\"seed\": 7, \"temperature\": 1.0}", [] {
        return chain_of({llama_sampler_init_temp(1.0f), llama_sampler_init_dist(7)});
    }, false);
    run("top_p", "{\"seed\": 3, \"temperature\": 1.0, \"top_p\": 0.9}", [] {
        return chain_of({llama_sampler_init_top_p(0.9f, 0), llama_sampler_init_temp(1.0f), llama_sampler_init_dist(3)});
    }, false);
    run("min_p", "{\"seed\": 4, \"temperature\": 1.0, \"min_p\": 0.2}", [] {
        return chain_of({llama_sampler_init_min_p(0.2f, 0), llama_sampler_init_temp(1.0f), llama_sampler_init_dist(4)});
    }, false);
    run("xtc", "{\"seed\": 5, \"temperature\": 1.0, \"top_k\": 40, \"xtc_probability\": 0.5, \"xtc_threshold\": 0.1}", [] {
        return chain_of({llama_sampler_init_top_k(40), llama_sampler_init_xtc(0.5f, 0.1f, 0, 5),
                         llama_sampler_init_temp(1.0f), llama_sampler_init_dist(5)});
    }, false);
    run("typical", "{\"seed\": 6, \"temperature\": 1.0, \"typical_p\": 0.9}", [] {
        return chain_of({llama_sampler_init_typical(0.9f, 0), llama_sampler_init_temp(1.0f), llama_sampler_init_dist(6)});
    }, false);
    run("top_n_sigma", "{\"seed\": 8, \"temperature\": 1.0, \"top_n_sigma\": 1.0}", [] {
        return chain_of({llama_sampler_init_top_n_sigma(1.0f), llama_sampler_init_temp(1.0f), llama_sampler_init_dist(8)});
    }, false);
    run("dynatemp", "{\"seed\": 11, \"temperature\": 0.8, \"top_k\": 40, \"dynatemp_range\": 0.5, \"dynatemp_exponent\": 1.5}", [] {
        return chain_of({llama_sampler_init_top_k(40), llama_sampler_init_temp_ext(0.8f, 0.5f, 1.5f), llama_sampler_init_dist(11)});
    }, false);
    run("dynatemp_from_zero", "{\"seed\": 12, \"temperature\": 0.0, \"dynatemp_range\": 1.0}", [] {
        return chain_of({llama_sampler_init_temp_ext(0.0f, 1.0f, 1.0f), llama_sampler_init_dist(12)});
    }, false);
    run("mirostat_v1", "{\"seed\": 9, \"temperature\": 0.8, \"mirostat\": 1}", [] {
        return chain_of({llama_sampler_init_temp(0.8f), llama_sampler_init_mirostat(VOCAB, 9, 5.0f, 0.1f, 100)});
    }, false);
    run("mirostat_v2", "{\"seed\": 10, \"temperature\": 0.8, \"mirostat\": 2}", [] {
        return chain_of({llama_sampler_init_temp(0.8f), llama_sampler_init_mirostat_v2(10, 5.0f, 0.1f)});
    }, true);
    printf("  ]\n}\n");
}
