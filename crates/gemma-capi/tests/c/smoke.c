/*
 * A C program against gemma.h, built and run by tests/c_program.rs:
 *   smoke MODEL_PATH PROMPT MAX_TOKENS
 * It checks the API from C (errors, the two-call buffer protocol, the callback) and prints, for the Rust test to
 * compare with the library: the struct layouts, the prompt's ids, and after a "--- generated ---" line the
 * greedy continuation. Exit status 0 only if every check held.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemma.h"

static int failures = 0;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "smoke.c:%d: check failed: %s (last error: %s)\n", __LINE__, \
                    #cond, gemma_last_error());                                          \
            failures++;                                                                  \
        }                                                                                \
    } while (0)

/* The pieces the callback saw, joined, and how many calls there were. */
typedef struct {
    char text[65536];
    size_t len;
    int calls;
    int stop_after; /* return non-zero at this call (0: never) */
} pieces;

static int on_token(int32_t token, const char *piece, size_t piece_len, void *user_data) {
    pieces *p = (pieces *)user_data;
    (void)token;
    if (piece[piece_len] != '\0' || p->len + piece_len >= sizeof p->text) {
        failures++;
        return 1;
    }
    memcpy(p->text + p->len, piece, piece_len);
    p->len += piece_len;
    p->text[p->len] = '\0';
    p->calls++;
    return p->stop_after != 0 && p->calls >= p->stop_after;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: smoke MODEL_PATH PROMPT MAX_TOKENS\n");
        return 2;
    }
    const char *prompt = argv[2];

    printf("version %s %d\n", gemma_version_string(), gemma_version());
    printf("sizeof_params %zu\n", sizeof(gemma_params));
    printf("sizeof_info %zu\n", sizeof(gemma_generation_info));
    printf("offsetof_info_prefill %zu\n", offsetof(gemma_generation_info, prefill_tokens_per_second));

    /* Errors are codes and messages, not crashes. */
    CHECK(gemma_model_open("/nonexistent/model.gguf", 1) == NULL);
    CHECK(strstr(gemma_last_error(), "No such file") != NULL);
    CHECK(gemma_model_open(NULL, 1) == NULL);
    size_t n = 0;
    CHECK(gemma_tokenize(NULL, "x", 1, NULL, 0, &n) == GEMMA_ERR_INVALID_ARGUMENT);
    CHECK(strcmp(gemma_error_string(GEMMA_ERR_BUFFER_TOO_SMALL), "buffer too small") == 0);

    gemma_model *model = gemma_model_open(argv[1], 2);
    if (model == NULL) {
        fprintf(stderr, "cannot open %s: %s\n", argv[1], gemma_last_error());
        return 1;
    }
    printf("vocab %d\n", gemma_model_vocab_size(model));
    printf("context %d\n", gemma_model_context_length(model));
    printf("name %s\n", gemma_model_name(model));
    CHECK(gemma_tokenize(model, "\xff", 1, NULL, 0, &n) == GEMMA_ERR_INVALID_UTF8);

    /* Tokenize: ask for the size, then fill. */
    CHECK(gemma_tokenize(model, prompt, 1, NULL, 0, &n) == GEMMA_ERR_BUFFER_TOO_SMALL);
    uint32_t *ids = malloc(n * sizeof *ids);
    size_t n_ids = 0;
    CHECK(ids != NULL && gemma_tokenize(model, prompt, 1, ids, n, &n_ids) == GEMMA_OK && n_ids == n);
    printf("ids");
    for (size_t i = 0; i < n_ids; i++) {
        printf(" %u", (unsigned)ids[i]);
    }
    printf("\n");

    /* Detokenize back to the prompt (BOS gives no text). */
    size_t len = 0;
    CHECK(gemma_detokenize(model, ids, n_ids, 0, NULL, 0, &len) == GEMMA_ERR_BUFFER_TOO_SMALL);
    char *text = malloc(len + 1);
    CHECK(text != NULL && gemma_detokenize(model, ids, n_ids, 0, text, len + 1, &len) == GEMMA_OK);
    CHECK(text != NULL && strcmp(text, prompt) == 0);
    free(text);
    free(ids);

    /* Greedy generation, streamed. */
    gemma_params params = gemma_params_default();
    params.temperature = 0.0f;
    params.max_tokens = atoi(argv[3]);
    static pieces streamed;
    char *out = NULL;
    gemma_generation_info info;
    CHECK(gemma_generate(model, prompt, &params, on_token, &streamed, &out, &info) == GEMMA_OK);
    CHECK(out != NULL && strcmp(out, streamed.text) == 0);
    CHECK(info.n_generated_tokens == streamed.calls);
    printf("generated_tokens %d\n", info.n_generated_tokens);
    printf("stop_reason %d\n", info.stop_reason);

    /* The callback stops generation after three tokens. */
    static pieces stopped;
    stopped.stop_after = 3;
    gemma_generation_info stop_info;
    CHECK(gemma_generate(model, prompt, &params, on_token, &stopped, NULL, &stop_info) == GEMMA_OK);
    CHECK(stopped.calls == 3 && stop_info.n_generated_tokens == 3);
    CHECK(stop_info.stop_reason == GEMMA_STOP_CALLBACK);

    CHECK(gemma_generate(model, NULL, &params, NULL, NULL, NULL, NULL) == GEMMA_ERR_INVALID_ARGUMENT);
    gemma_model_free(model);
    gemma_model_free(NULL);

    printf("--- generated ---\n%s", out != NULL ? out : "");
    gemma_string_free(out);
    return failures == 0 ? 0 : 1;
}
