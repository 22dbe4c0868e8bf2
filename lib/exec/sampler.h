/* sampler.h - picks the next token from logits: greedy, or temperature with
 * nucleus (top-p) sampling from a seeded generator (same seed, same text). */
#ifndef MOEC_EXEC_SAMPLER_H
#define MOEC_EXEC_SAMPLER_H

#include <stdint.h>

typedef struct moec_sampler {
    float temperature; /* 0: greedy */
    float top_p;       /* in (0, 1]; 1 keeps the whole distribution */
    uint64_t state;    /* PRNG state (splitmix64) */
} moec_sampler;

void moec_sampler_init(moec_sampler *s, float temperature, float top_p, uint64_t seed);

/* Returns the chosen token id. logits [vocab] may be overwritten. */
int32_t moec_sampler_pick(moec_sampler *s, float *logits, int vocab);

#endif
