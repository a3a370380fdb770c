// Golden IQ4_NL / IQ4_XS bytes from llama.cpp's own encoders, for the byte-identity tests in
// crates/gemma-compression/src/iq4.rs. Built against the llama.cpp in ~/.cache/gemma-anchors (never committed):
//   A=~/.cache/gemma-anchors/llama.cpp
//   gcc -O2 -ffp-contract=off scripts/ggml_iq4_vectors.c -L$A/build/bin -lggml-base \
//       -Wl,-rpath,$A/build/bin -o /tmp/ggml_iq4_vectors
//   /tmp/ggml_iq4_vectors crates/gemma-compression/testdata
// Writes iq4_nl.bin and iq4_xs.bin: quantize_iq4_nl / quantize_iq4_xs (what llama-quantize calls) without an
// importance matrix, and iq4_nl_imatrix.bin / iq4_xs_imatrix.bin with one (COLS importances, as llama-quantize
// passes one imatrix entry for every row), on ROWS x COLS inputs from the generator below, which the Rust test
// repeats exactly (integer draws times exact float constants; built without -march and with contraction off, so
// no fused multiply-add changes a value).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t quantize_iq4_nl(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix);
size_t quantize_iq4_xs(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix);

enum { ROWS = 16, COLS = 1024 };

static uint64_t state = 0x1234;

static uint64_t next(void) {  // SplitMix64
    state += 0x9e3779b97f4a7c15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static const float SCALES[8] = {1.0f, 0.5f, 0.03125f, 3.0f, 0.0078125f, 0.37f, 12.5f, 0.001f};

// Per 32 values a scale, a shift and a kind (all zero, below ggml's 1e-15 group threshold, constant, or
// normal-ish with outliers and zeros); the first 256 values of row 0 are zero (an all-zero IQ4_XS block).
static void generate(float *x) {
    float scale = 1.0f, shift = 0.0f;
    uint64_t kind = 0;
    for (int i = 0; i < ROWS * COLS; ++i) {
        if (i % 32 == 0) {
            scale = SCALES[next() % 8];
            shift = next() % 4 == 0 ? scale * 0.25f : 0.0f;
            kind = next() % 16;
        }
        uint64_t r = next() % 64;
        float k = (float)((int)(next() % 2001) - 1000);
        float v = r == 0 ? 0.0f : r == 1 ? k * scale * 0.01f : k * scale * 0.001f + shift;
        if (kind == 0) v = 0.0f;
        if (kind == 1) v = k * 1e-19f;
        if (kind == 2) v = scale;
        if (i < 256) v = 0.0f;
        x[i] = v;
    }
}

// After the inputs: per column an importance of 0.01..10 in steps of 0.01, zero for one column in 16 and for
// all of columns 32..63 (a block whose search has no weight at all), tiny for columns 96..127.
static void generate_importance(float *qw) {
    for (int j = 0; j < COLS; ++j) {
        float v = (float)(next() % 1000 + 1) * 0.01f;
        if (next() % 16 == 0 || (j >= 32 && j < 64)) v = 0.0f;
        if (j >= 96 && j < 128) v *= 1e-30f;
        qw[j] = v;
    }
}

static void write_file(const char *dir, const char *name, const void *data, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    printf("%s: %zu bytes\n", path, n);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
        return 2;
    }
    static float x[ROWS * COLS];
    static uint8_t out[ROWS * COLS];
    static float qw[COLS];
    generate(x);
    generate_importance(qw);
    size_t n = quantize_iq4_nl(x, out, ROWS, COLS, NULL);
    write_file(argv[1], "iq4_nl.bin", out, n);
    n = quantize_iq4_xs(x, out, ROWS, COLS, NULL);
    write_file(argv[1], "iq4_xs.bin", out, n);
    n = quantize_iq4_nl(x, out, ROWS, COLS, qw);
    write_file(argv[1], "iq4_nl_imatrix.bin", out, n);
    n = quantize_iq4_xs(x, out, ROWS, COLS, qw);
    write_file(argv[1], "iq4_xs_imatrix.bin", out, n);
    return 0;
}
