/*
 * A C program against gemma.h's embedding functions, built and run by tests/c_program.rs:
 *   embed EMBEDDING_MODEL GENERATIVE_MODEL TEXT...
 * It checks from C the width, the two-call buffer protocol, a batch against single calls, and the errors of a
 * model of the wrong kind, and prints for the Rust test to compare with the reference: the width, the error
 * messages, and each text's vector ("vector I V0 V1 ..."). Exit status 0 only if every check held.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemma.h"

static int failures = 0;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "embed.c:%d: check failed: %s (last error: %s)\n", __LINE__, \
                    #cond, gemma_last_error());                                          \
            failures++;                                                                  \
        }                                                                                \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: embed EMBEDDING_MODEL GENERATIVE_MODEL TEXT...\n");
        return 2;
    }
    gemma_model *embedder = gemma_model_open(argv[1], 2);
    gemma_model *generator = gemma_model_open(argv[2], 2);
    if (embedder == NULL || generator == NULL) {
        fprintf(stderr, "cannot open the models: %s\n", gemma_last_error());
        return 1;
    }
    const char *const *texts = (const char *const *)(argv + 3);
    size_t n_texts = (size_t)(argc - 3);

    int dim = gemma_model_embedding_dim(embedder);
    printf("dim %d\n", dim);
    CHECK(dim > 0);
    CHECK(gemma_model_embedding_dim(generator) == 0);
    CHECK(gemma_model_embedding_dim(NULL) == GEMMA_ERR_INVALID_ARGUMENT);
    if (dim <= 0) {
        return 1;
    }
    size_t width = (size_t)dim;

    /* One text at a time: ask for the size, then fill. */
    float *single = malloc(n_texts * width * sizeof *single);
    CHECK(single != NULL);
    for (size_t t = 0; single != NULL && t < n_texts; t++) {
        size_t n = 0;
        CHECK(gemma_embed(embedder, texts[t], NULL, 0, &n) == GEMMA_ERR_BUFFER_TOO_SMALL && n == width);
        CHECK(gemma_embed(embedder, texts[t], single + t * width, width, &n) == GEMMA_OK && n == width);
        double norm = 0.0;
        for (size_t i = 0; i < width; i++) {
            norm += (double)single[t * width + i] * single[t * width + i];
        }
        CHECK(norm > 1.0 - 2e-5 && norm < 1.0 + 2e-5); /* unit length */
    }

    /* All at once: a buffer one float short is left alone, one of the size needed is filled. */
    size_t needed = 0;
    CHECK(gemma_embed_batch(embedder, texts, n_texts, NULL, 0, &needed) == GEMMA_ERR_BUFFER_TOO_SMALL);
    CHECK(needed == n_texts * width);
    float *batch = malloc(needed * sizeof *batch);
    CHECK(batch != NULL);
    if (batch != NULL) {
        batch[0] = -7.0f;
        size_t n = 0;
        CHECK(gemma_embed_batch(embedder, texts, n_texts, batch, needed - 1, &n) == GEMMA_ERR_BUFFER_TOO_SMALL);
        CHECK(batch[0] == -7.0f && n == needed);
        CHECK(gemma_embed_batch(embedder, texts, n_texts, batch, needed, &n) == GEMMA_OK && n == needed);
    }

    /* Models of the wrong kind, and bad arguments. */
    size_t n = 0;
    float one[4];
    CHECK(gemma_embed(generator, texts[0], one, 4, &n) == GEMMA_ERR_WRONG_MODEL_KIND && n == 0);
    printf("embed_on_generative %s\n", gemma_last_error());
    char *out = NULL;
    CHECK(gemma_generate(embedder, texts[0], NULL, NULL, NULL, &out, NULL) == GEMMA_ERR_WRONG_MODEL_KIND);
    CHECK(out == NULL);
    printf("generate_on_embedding %s\n", gemma_last_error());
    CHECK(gemma_embed(embedder, NULL, NULL, 0, &n) == GEMMA_ERR_INVALID_ARGUMENT);
    CHECK(gemma_embed(embedder, "\xff", NULL, 0, &n) == GEMMA_ERR_INVALID_UTF8);
    CHECK(gemma_embed(embedder, texts[0], NULL, 0, NULL) == GEMMA_ERR_INVALID_ARGUMENT);

    for (size_t t = 0; single != NULL && batch != NULL && t < n_texts; t++) {
        double diff = 0.0;
        printf("vector %zu", t);
        for (size_t i = 0; i < width; i++) {
            printf(" %.9g", single[t * width + i]);
            double d = (double)single[t * width + i] - batch[t * width + i];
            diff += d * d;
        }
        printf("\n");
        CHECK(diff < 1e-10); /* the batch gives each text's vector, in order */
    }
    free(single);
    free(batch);
    gemma_model_free(embedder);
    gemma_model_free(generator);
    return failures == 0 ? 0 : 1;
}
