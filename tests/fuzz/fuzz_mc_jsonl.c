/* fuzz_mc_jsonl.c - libFuzzer target for multiple-choice JSONL (lm-eval
 * style: one {"context", "choices", "label"} object per line), parsed and
 * tokenized with the bundled model's tokenizer (loaded once) as moec-eval
 * --mc does (moec_mc_parse, the code behind moec_mc_load). Every item
 * accepted must hold a label inside its choices and non-empty token lists.
 * Seeds in tests/fuzz/corpus/mc_jsonl. */
#include <stdio.h>
#include <stdlib.h>

#include "eval/mc_data.h"
#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"

#ifndef MOEC_SOURCE_DIR
#define MOEC_SOURCE_DIR "."
#endif

static moec_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *root = getenv("MOEC_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/models/mixtral-tiny/tokenizer.json", root ? root : MOEC_SOURCE_DIR);
    moec_err err;
    if (moec_tokenizer_load(&tok, path, &err) != MOEC_OK) {
        fprintf(stderr, "fuzz_mc_jsonl: %s\n", err.msg);
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moec_mc_item *items;
    size_t n;
    moec_err err;
    if (moec_mc_parse((const char *)data, size, "fuzz", tok, &items, &n, &err) != MOEC_OK)
        return 0;
    for (size_t i = 0; i < n; i++) {
        const moec_mc_item *it = &items[i];
        if (it->label < 0 || it->label >= it->n_choices || it->n_ctx == 0)
            abort();
        fuzz_touch(it->ctx, it->n_ctx * sizeof *it->ctx);
        for (int c = 0; c < it->n_choices; c++) {
            if (it->n_choice[c] == 0)
                abort();
            fuzz_touch(it->choice[c], it->n_choice[c] * sizeof *it->choice[c]);
        }
    }
    moec_mc_free(items, n);
    return 0;
}
