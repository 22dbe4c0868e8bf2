#include "exec/sampler.h"

#include <math.h>
#include <stdlib.h>

void moec_sampler_init(moec_sampler *s, float temperature, float top_p, uint64_t seed)
{
    s->temperature = temperature;
    s->top_p = top_p > 0.0f && top_p <= 1.0f ? top_p : 1.0f;
    s->state = seed;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in [0, 1) with 53 random bits */
static double uniform(moec_sampler *s) { return (double)(splitmix64(&s->state) >> 11) * 0x1.0p-53; }

typedef struct {
    float p;
    int32_t id;
} prob_id;

static int by_prob_desc(const void *a, const void *b)
{
    const prob_id *x = a, *y = b;
    if (x->p != y->p)
        return x->p < y->p ? 1 : -1;
    return x->id - y->id;
}

int32_t moec_sampler_pick(moec_sampler *s, float *logits, int vocab)
{
    int32_t best = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    if (s->temperature <= 0.0f)
        return best;
    double sum = 0.0;
    for (int i = 0; i < vocab; i++) {
        logits[i] = expf((logits[i] - logits[best]) / s->temperature);
        sum += logits[i];
    }
    double r = uniform(s);
    if (s->top_p >= 1.0f) {
        double acc = 0.0, target = r * sum;
        for (int i = 0; i < vocab; i++) {
            acc += logits[i];
            if (acc > target)
                return i;
        }
        return best;
    }
    prob_id *ps = malloc((size_t)vocab * sizeof *ps);
    if (!ps)
        return best; /* no memory: greedy rather than fail mid-generation */
    for (int i = 0; i < vocab; i++)
        ps[i] = (prob_id){(float)(logits[i] / sum), i};
    qsort(ps, (size_t)vocab, sizeof *ps, by_prob_desc);
    double mass = 0.0;
    int keep = 0;
    while (keep < vocab && mass < s->top_p)
        mass += ps[keep++].p;
    double acc = 0.0, target = r * mass;
    int32_t pick = ps[keep - 1].id;
    for (int i = 0; i < keep; i++) {
        acc += ps[i].p;
        if (acc > target) {
            pick = ps[i].id;
            break;
        }
    }
    free(ps);
    return pick;
}
