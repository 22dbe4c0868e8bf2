/* mc_data.h - multiple-choice items from lm-eval-style JSONL:
 * one object per line with "context" (string), "choices" (strings) and
 * "label" (index of the right choice); other keys are ignored. */
#ifndef MOEC_EVAL_MC_DATA_H
#define MOEC_EVAL_MC_DATA_H

#include "eval/eval.h"
#include "tokenizer/tokenizer.h"

/* Reads and tokenizes every item (context and each choice separately).
 * Errors name the file and line. Free with moec_mc_free. */
moec_status moec_mc_load(const char *path, const moec_tokenizer *tok, moec_mc_item **items, size_t *n_items,
                         moec_err *err);
/* The same on JSONL text in memory (len bytes, need not be NUL-terminated;
 * a NUL byte inside is an error); label names it in messages. */
moec_status moec_mc_parse(const char *data, size_t len, const char *label, const moec_tokenizer *tok,
                          moec_mc_item **items, size_t *n_items, moec_err *err);
void moec_mc_free(moec_mc_item *items, size_t n_items);

#endif
