/*
 * gemma.h: the C API of gemma-rs, a CPU inference engine for Gemma models (GGUF files and gemma.cpp SBS
 * checkpoints): text generation, conversations that keep their KV cache between turns, and embeddings from
 * embedding models (EmbeddingGemma).
 *
 * Build: `cargo build -p gemma-capi --release` gives target/release/libgemma_capi.so (and .a).
 * Link:  cc app.c -Icrates/gemma-capi/include -Ltarget/release -lgemma_capi
 * Guide: docs/c-api.md.
 *
 * Conventions
 * - Functions that can fail return a gemma_status: GEMMA_OK (0) or a negative error code. Functions that return
 *   a pointer return NULL on failure. Either way gemma_last_error() then holds a message saying why.
 * - Every pointer argument is checked: NULL where something is required is GEMMA_ERR_INVALID_ARGUMENT, never
 *   a crash. Strings in are NUL-terminated UTF-8; invalid UTF-8 is GEMMA_ERR_INVALID_UTF8. Strings out are
 *   UTF-8.
 * - Ownership: what gemma_model_open returns is freed with gemma_model_free, what gemma_chat_new returns with
 *   gemma_chat_free (before the model it was made from); the text gemma_generate and gemma_chat_send hand out
 *   is freed with gemma_string_free. Every other returned string belongs to the library (static, or owned by
 *   the model handle as stated) and must not be freed.
 * - Threads: a gemma_model may be used from several threads at once: every call but gemma_lora_load only reads
 *   it (gemma_lora_load waits for running generations and is refused while a chat is open), and each
 *   gemma_generate call keeps its own session (KV cache, sampler) for the length of the call, as each
 *   gemma_embed call its own buffers. Concurrent calls on one handle share its thread pool and take turns in
 *   each parallel step; for independent
 *   speed, open one handle per thread. gemma_model_free must not run while another call uses the handle.
 *   A gemma_chat holds one conversation's state: use it from one thread at a time. Several chats on one model
 *   may run at once, as gemma_generate calls do. gemma_last_error() is per thread.
 * - No Rust panic crosses this boundary: an internal failure is GEMMA_ERR_INTERNAL.
 * - The ABI is that of version 0.x: structs may gain fields in a later version. Fill gemma_params from
 *   gemma_params_default() and set the fields you need.
 */
#ifndef GEMMA_H
#define GEMMA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. */
typedef enum gemma_status {
    GEMMA_OK = 0,
    GEMMA_ERR_INVALID_ARGUMENT = -1, /* a NULL pointer, or a value out of range */
    GEMMA_ERR_INVALID_UTF8 = -2,     /* a string argument is not UTF-8 */
    GEMMA_ERR_BUFFER_TOO_SMALL = -3, /* the size needed is in *n_out: call again with a larger buffer */
    GEMMA_ERR_MODEL_LOAD = -4,       /* the model file cannot be read or used */
    GEMMA_ERR_INVALID_TOKEN = -5,    /* a token id outside the vocabulary */
    GEMMA_ERR_CONTEXT_FULL = -6,     /* the prompt does not fit in the model's context */
    GEMMA_ERR_CHAT_TEMPLATE = -7,    /* the model's chat template cannot render the prompt */
    GEMMA_ERR_GENERATION = -8,       /* the forward pass failed (of a generation or an embedding) */
    GEMMA_ERR_INTERNAL = -9,         /* a bug in gemma-rs (caught; the process goes on) */
    GEMMA_ERR_WRONG_MODEL_KIND = -10, /* gemma_embed on a generative model, gemma_generate on an embedding one */
    GEMMA_ERR_LORA = -11              /* the LoRA adapter file cannot be read or does not fit the model */
} gemma_status;

/* Why a generation ended (gemma_generation_info.stop_reason). */
typedef enum gemma_stop_reason {
    GEMMA_STOP_END_OF_GENERATION = 0, /* the model produced an end token (EOS, <end_of_turn>) */
    GEMMA_STOP_MAX_TOKENS = 1,        /* max_tokens were generated */
    GEMMA_STOP_CONTEXT_FULL = 2,      /* the context filled up */
    GEMMA_STOP_CALLBACK = 3           /* the token callback returned non-zero */
} gemma_stop_reason;

/*
 * Types the KV cache stores keys and values in (gemma_params.type_k / type_v): the GGML type ids, as llama.cpp's
 * llama_context_params.type_k / type_v. F32 is the default here (llama.cpp's is F16); smaller types take less
 * memory and move the logits a little (F16, Q8_0) or more (the 4- and 5-bit ones): see docs/kv-cache.md.
 */
typedef enum gemma_cache_type {
    GEMMA_CACHE_F32 = 0,
    GEMMA_CACHE_F16 = 1,
    GEMMA_CACHE_Q4_0 = 2,
    GEMMA_CACHE_Q4_1 = 3,
    GEMMA_CACHE_Q5_0 = 6,
    GEMMA_CACHE_Q5_1 = 7,
    GEMMA_CACHE_Q8_0 = 8,
    GEMMA_CACHE_IQ4_NL = 20,
    GEMMA_CACHE_BF16 = 30
} gemma_cache_type;

/* gemma_params.seed that seeds the sampler from the clock. */
#define GEMMA_SEED_RANDOM 0xFFFFFFFFu

/* The token a callback is given with the text still held back at the end (an unfinished character). */
#define GEMMA_NO_TOKEN (-1)

/* A loaded model: weights, tokenizer, chat template and a thread pool. Opaque. */
typedef struct gemma_model gemma_model;

/* A conversation with a model: its messages, KV cache and sampler. Opaque. */
typedef struct gemma_chat gemma_chat;

/* Generation parameters. Start from gemma_params_default(). */
typedef struct gemma_params {
    int32_t max_tokens;     /* most tokens to generate (default 256); 0 runs only the prompt */
    float temperature;      /* <= 0: greedy (default 1.0) */
    int32_t top_k;          /* keep the k most likely tokens; 0: off (default 1, so the default is greedy) */
    float top_p;            /* nucleus sampling in [0, 1]; 1: off (default) */
    float min_p;            /* in [0, 1]; 0: off (default) */
    float repeat_penalty;   /* > 0; 1: off (default) */
    int32_t repeat_last_n;  /* tokens the penalty looks back over (default 64); -1: the whole context */
    uint32_t seed;          /* sampler seed, as llama.cpp's; GEMMA_SEED_RANDOM (default): from the clock */
    int32_t chat;           /* non-zero: the prompt is a user turn in the model's chat template (default 0) */
    int32_t n_ctx;          /* gemma_generate's context in tokens; 0 (default) or more than the model's: the
                               model's context length. A chat takes gemma_chat_new's n_ctx instead. */
    int32_t context_shift;  /* non-zero: when the context is full, forget half of the tokens after the first
                               n_keep and go on generating, as llama.cpp's --context-shift (default 0: stop,
                               GEMMA_STOP_CONTEXT_FULL) */
    int32_t n_keep;         /* with context_shift: tokens after BOS never forgotten (default 0); -1: the whole
                               prompt (gemma_generate only). In a chat they count from the conversation's start. */
    int32_t type_k;         /* a gemma_cache_type for the KV cache's keys (default GEMMA_CACHE_F32); a chat takes
                               gemma_chat_new's params' types for its whole life */
    int32_t type_v;         /* a gemma_cache_type for its values (default GEMMA_CACHE_F32) */
} gemma_params;

/* What a generation did (optional output of gemma_generate). */
typedef struct gemma_generation_info {
    int32_t n_prompt_tokens;          /* tokens of the prompt, BOS and chat template included */
    int32_t n_generated_tokens;       /* generated tokens, the end token excluded */
    int32_t stop_reason;              /* a gemma_stop_reason */
    double prefill_tokens_per_second;
    double decode_tokens_per_second;
    int32_t n_context_shifts;         /* context shifts made (gemma_params.context_shift) */
} gemma_generation_info;

/*
 * Called once per generated token, on the thread that called gemma_generate. `token` is the token's id;
 * `piece` is the text that token completes: `piece_len` bytes of UTF-8 (whole characters only, so it may be
 * empty while a character spans several tokens), followed by a NUL. After the last token, if text was still
 * held back, one more call comes with token GEMMA_NO_TOKEN. `piece` is valid only during the call.
 * Return 0 to go on, non-zero to stop after this token; after a non-zero return the callback is not called
 * again. The callback must not unwind (C++ exceptions, longjmp) through gemma_generate.
 */
typedef int (*gemma_token_callback)(int32_t token, const char *piece, size_t piece_len, void *user_data);

/* Version: major * 10000 + minor * 100 + patch, and as static text ("0.1.0"). */
int gemma_version(void);
const char *gemma_version_string(void);

/* A static description of a gemma_status ("unknown status" for any other value). */
const char *gemma_error_string(int code);

/*
 * The message of the last failed call on this thread, e.g. "cannot load the model: /m.gguf: cannot read file:
 * No such file or directory (os error 2)"; "" if none failed. Successful calls leave it as it is. Owned by the
 * library; valid until the next failing call on this thread.
 */
const char *gemma_last_error(void);

/*
 * Opens a GGUF file or a gemma.cpp SBS checkpoint at `path` (a path, not a model name: `gemma pull` downloads
 * known models), or EmbeddingGemma's sentence-transformers folder, with a pool of `n_threads` threads (<= 0: one
 * per available core). Returns NULL on failure (see gemma_last_error()).
 */
gemma_model *gemma_model_open(const char *path, int n_threads);

/* Frees a model; NULL is ignored. */
void gemma_model_free(gemma_model *model);

/* Tokens in the vocabulary, and the context length in tokens; a negative gemma_status if `model` is NULL. */
int gemma_model_vocab_size(const gemma_model *model);
int gemma_model_context_length(const gemma_model *model);

/* The model's name from its metadata (may be ""), owned by the model; NULL if `model` is NULL. */
const char *gemma_model_name(const gemma_model *model);

/*
 * The width of the model's embeddings (768 for EmbeddingGemma); 0 for a generative model, which makes text, not
 * embeddings; a negative gemma_status if `model` is NULL.
 */
int gemma_model_embedding_dim(const gemma_model *model);

/*
 * Tokenizes `text`. Special tokens written in the text (<start_of_turn>, ...) are recognised, as in
 * generation. With `add_bos` non-zero the model's BOS token comes first, if the model uses one.
 * *n_out receives the number of ids. They are written to `out` only if `cap` holds them all; otherwise the
 * result is GEMMA_ERR_BUFFER_TOO_SMALL: call again with a buffer of *n_out ids. `out` may be NULL when `cap` is
 * 0 (to ask for the size).
 */
int gemma_tokenize(const gemma_model *model, const char *text, int add_bos, uint32_t *out, size_t cap,
                   size_t *n_out);

/*
 * Turns token ids into text (invalid UTF-8 from byte tokens becomes U+FFFD). Control tokens such as <bos> give
 * no text unless `render_special` is non-zero. *n_out receives the text's length in bytes, without the NUL.
 * The text and a NUL are written to `out` only if `cap >= *n_out + 1`; otherwise GEMMA_ERR_BUFFER_TOO_SMALL.
 * An id outside the vocabulary is GEMMA_ERR_INVALID_TOKEN. `ids` may be NULL when `n_ids` is 0.
 */
int gemma_detokenize(const gemma_model *model, const uint32_t *ids, size_t n_ids, int render_special, char *out,
                     size_t cap, size_t *n_out);

/* The default generation parameters: the library's own, which are greedy (top_k 1), 256 tokens at most. */
gemma_params gemma_params_default(void);

/*
 * Generates a continuation of `prompt` (BOS added if the model uses one; special tokens recognised), or with
 * params->chat the model's answer to `prompt` as a user turn of its chat template. Generation ends at the
 * model's end tokens (EOS, <end_of_turn>), after max_tokens, when the context is full, or when `callback`
 * returns non-zero. An embedding model generates nothing: GEMMA_ERR_WRONG_MODEL_KIND (use gemma_embed).
 * - params: NULL means gemma_params_default().
 * - callback: may be NULL; it gets each token as it is generated (see gemma_token_callback), with `user_data`.
 * - out_text: may be NULL; on GEMMA_OK, *out_text is the whole generated text (NUL-terminated; free it with
 *   gemma_string_free). On failure it is set to NULL.
 * - out_info: may be NULL; on GEMMA_OK it receives the counts and the stop reason (zeroed on failure).
 * Returns GEMMA_OK (also when the callback stopped generation) or an error code.
 */
int gemma_generate(const gemma_model *model, const char *prompt, const gemma_params *params,
                   gemma_token_callback callback, void *user_data, char **out_text, gemma_generation_info *out_info);

/* Frees a string from gemma_generate or gemma_chat_send; NULL is ignored. */
void gemma_string_free(char *text);

/* What a chat turn did (optional output of gemma_chat_send). */
typedef struct gemma_chat_info {
    gemma_generation_info generation; /* as gemma_generate's; n_prompt_tokens counts this turn's prefill only */
    int32_t n_reused_tokens;          /* tokens of the conversation whose KV cache entries were kept */
    int32_t n_dropped_messages;       /* oldest messages dropped so that the turn fits in the context */
    int32_t n_context_tokens;         /* tokens in the KV cache after the turn */
} gemma_chat_info;

/*
 * Starts a conversation with a generative model through its chat template (as `gemma chat`). Each turn renders
 * the whole conversation, keeps the KV cache entries of the tokens it shares with the previous turns and
 * prefills only the rest, so a turn costs its own new tokens. One sampler serves the whole conversation
 * (penalties see every turn; seeded draws go on from turn to turn).
 * - system_prompt: NULL or "" for none.
 * - params: NULL means gemma_params_default(); params->chat is ignored (a chat always uses the template).
 * - n_ctx: the context in tokens; <= 0 (or more than the model's) means the model's context length.
 * Returns NULL on failure (see gemma_last_error()): an embedding model (GEMMA_ERR_WRONG_MODEL_KIND), a model
 * whose chat template cannot be used (GEMMA_ERR_CHAT_TEMPLATE), bad parameters. The chat borrows `model`: free
 * the chat before the model. The chat runs at the model's default LoRA scales as they are now, and keeps its
 * own from then on (gemma_chat_set_lora_scale).
 */
gemma_chat *gemma_chat_new(const gemma_model *model, const char *system_prompt, const gemma_params *params,
                           int n_ctx);

/* Frees a chat; NULL is ignored. */
void gemma_chat_free(gemma_chat *chat);

/*
 * Adds `message` as the user's turn and generates the model's answer, which joins the conversation (also when
 * cut short by max_tokens or the callback). `callback`, `user_data`, `out_text` are as in gemma_generate.
 * When the conversation and room for an answer (max_tokens, at most half the context) no longer fit in the
 * context, the oldest user/answer pairs are dropped; the system prompt stays. A message that does not fit
 * even alone is GEMMA_ERR_CONTEXT_FULL. With params->context_shift, an answer that fills the context goes on
 * after a context shift (the forgotten tokens leave the KV cache, not the messages; the next turn renders the
 * messages again). On any failure the conversation's messages are as before the call.
 * out_info: may be NULL; on GEMMA_OK it receives the turn's figures (zeroed on failure).
 */
int gemma_chat_send(gemma_chat *chat, const char *message, gemma_token_callback callback, void *user_data,
                    char **out_text, gemma_chat_info *out_info);

/*
 * Appends a message without generating anything: to restore a saved conversation, or to put words in the
 * model's mouth. `role` is "system", "user" or "assistant" (anything else is GEMMA_ERR_INVALID_ARGUMENT);
 * whether the template accepts the order of the roles shows at the next gemma_chat_send.
 */
int gemma_chat_add_message(gemma_chat *chat, const char *role, const char *content);

/* Sets the system prompt, replacing any; NULL or "" removes it. The KV cache is reused as far as it agrees. */
int gemma_chat_set_system(gemma_chat *chat, const char *system_prompt);

/* Forgets every message but the system prompt, empties the KV cache and restarts the sampler's history. */
int gemma_chat_clear(gemma_chat *chat);

/* Messages in the conversation (the system prompt counts as one), or a negative gemma_status. */
int gemma_chat_n_messages(const gemma_chat *chat);

/*
 * Message `index` (0 is the oldest): *role receives "system", "user" or "assistant", *content its text
 * (NUL-terminated; *content_len bytes, which may hold a NUL of the model's making). Any of the three may be
 * NULL. The strings belong to the chat and stay valid until the next call that changes it (send, add, set
 * system, clear, free). An index past the end is GEMMA_ERR_INVALID_ARGUMENT.
 */
int gemma_chat_message(const gemma_chat *chat, size_t index, const char **role, const char **content,
                       size_t *content_len);

/* Tokens in the chat's KV cache now, or a negative gemma_status. */
int gemma_chat_context_used(const gemma_chat *chat);

/*
 * Speculative decoding with n-grams from the next turn on, as `gemma chat --spec-type`: "ngram-simple" or
 * "ngram-mod" with llama.cpp's default settings; NULL or "none" turns it off (the default). Drafts are looked up
 * in the whole conversation the KV cache holds; the answers are the same as without it, faster where they repeat
 * earlier text. Any other name is GEMMA_ERR_INVALID_ARGUMENT and changes nothing.
 */
int gemma_chat_set_speculative(gemma_chat *chat, const char *spec_type);

/* The last turn's drafted tokens (*n_drafted) and how many of them the sampler kept (*n_accepted); both 0 without
 * speculation. Either pointer may be NULL. */
int gemma_chat_speculative_stats(const gemma_chat *chat, int32_t *n_drafted, int32_t *n_accepted);

/*
 * The embedding of `text` from an embedding model: gemma_model_embedding_dim(model) floats, L2-normalised (unit
 * length, so the dot product of two embeddings is their cosine similarity). The text is encoded as a whole
 * input, with the model's BOS and EOS; special tokens written in it are recognised. EmbeddingGemma expects a task
 * prefix, e.g. "task: search result | query: ..." for queries and "title: none | text: ..." for documents.
 * *n_out receives the width. The vector is written to `out` only if `cap` holds it; otherwise the result is
 * GEMMA_ERR_BUFFER_TOO_SMALL (and nothing is computed): call again with a buffer of *n_out floats. `out` may be
 * NULL when `cap` is 0. On other failures *n_out is 0.
 * A generative model is GEMMA_ERR_WRONG_MODEL_KIND; a text longer than the model's context (BOS and EOS
 * included) is GEMMA_ERR_CONTEXT_FULL.
 */
int gemma_embed(const gemma_model *model, const char *text, float *out, size_t cap, size_t *n_out);

/*
 * The embeddings of `n_texts` texts, as gemma_embed's, one after the other in `out`: text i's vector is
 * out[i * width .. (i + 1) * width). Several texts go through the model in one pass, which is faster than one
 * call each. *n_out receives n_texts * width; `out` must hold that many floats, else GEMMA_ERR_BUFFER_TOO_SMALL.
 * A NULL or non-UTF-8 texts[i] is an error naming i. `texts` may be NULL when `n_texts` is 0 (nothing to do).
 */
int gemma_embed_batch(const gemma_model *model, const char *const *texts, size_t n_texts, float *out, size_t cap,
                      size_t *n_out);

/*
 * LoRA adapters (GGUF files as llama.cpp's convert_lora_to_gguf.py writes them), applied as llama.cpp applies
 * them: each adapted product becomes W x + s * (B (A x)) with s = scale * alpha / rank. Adapters are loaded
 * onto an open model and stay until it is freed; each has a model-wide default scale, which every
 * gemma_generate call uses (as it is when the call starts), and which a new chat copies: a chat then has scales
 * of its own (gemma_chat_set_lora_scale). Scale 0 turns an adapter off (the base model's outputs, bit for bit).
 * Adapter indexes count from 0 in the order of loading.
 */

/*
 * Loads the LoRA adapter at `path` onto `model` with the default scale `scale` (1.0f: llama.cpp's --lora;
 * 0: loaded but off). Returns the adapter's index (>= 0), or a negative gemma_status: GEMMA_ERR_LORA when the
 * file cannot be read, is not a LoRA adapter (general.type / adapter.type), is for another architecture, or its
 * tensors do not fit the model (the message says which, in llama.cpp's words); GEMMA_ERR_INVALID_ARGUMENT for
 * a scale that is not a finite number, or while a chat is open on the model (load adapters before starting
 * chats), or from a token callback (the running generation reads the model). The call waits for
 * gemma_generate calls running on the model on other threads to end.
 */
int gemma_lora_load(gemma_model *model, const char *path, float scale);

/* Adapters loaded onto `model`, or a negative gemma_status. */
int gemma_lora_count(const gemma_model *model);

/*
 * Adapter `index`'s path as given to gemma_lora_load, its adapter.lora.task_name and adapter.lora.prompt_prefix
 * ("" when the file has none). Owned by the model; NULL for a bad index (GEMMA_ERR_INVALID_ARGUMENT in
 * gemma_last_error()).
 */
const char *gemma_lora_path(const gemma_model *model, int index);
const char *gemma_lora_task_name(const gemma_model *model, int index);
const char *gemma_lora_prompt_prefix(const gemma_model *model, int index);

/*
 * The model-wide default scale of adapter `index`: read into *scale, or set (any finite number; 0 turns the
 * adapter off). A new default applies to the next gemma_generate calls and the chats started after it, not to
 * chats already open. A bad index or a scale that is not finite is GEMMA_ERR_INVALID_ARGUMENT.
 */
int gemma_lora_get_scale(const gemma_model *model, int index, float *scale);
int gemma_lora_set_scale(gemma_model *model, int index, float scale);

/*
 * The chat's own scale of adapter `index` (a chat starts with the model's default scales). Setting a scale
 * that differs from the chat's empties the chat's KV cache: entries computed at other scales are never reused,
 * so the next gemma_chat_send prefills the whole conversation again (n_reused_tokens 0) and answers as a new
 * chat with the same messages at the new scales would. Setting the same scale again changes nothing. A bad
 * index or a scale that is not finite is GEMMA_ERR_INVALID_ARGUMENT.
 */
int gemma_chat_set_lora_scale(gemma_chat *chat, int index, float scale);
int gemma_chat_get_lora_scale(const gemma_chat *chat, int index, float *scale);

#ifdef __cplusplus
}
#endif

#endif /* GEMMA_H */
