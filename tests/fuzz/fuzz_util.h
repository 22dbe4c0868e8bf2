/* fuzz_util.h - what the fuzz targets share: the part separator of inputs
 * that hold several files, and a sink that keeps reads from being optimised
 * away.
 *
 * An input made of parts (a tokenizer.json and a text; an index and its
 * shards) separates them with FUZZ_SEP, a line no JSON text contains (raw
 * newlines are not allowed inside JSON strings): "\n@@@@\n". */
#ifndef MOEC_FUZZ_UTIL_H
#define MOEC_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FUZZ_SEP "\n@@@@\n"
#define FUZZ_SEP_LEN 6

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Cuts data into at most max parts at FUZZ_SEP; the last part takes the
 * rest. Returns the number of parts (>= 1). */
static inline int fuzz_split(const uint8_t *data, size_t size, const uint8_t **part, size_t *len, int max)
{
    int n = 0;
    const uint8_t *p = data;
    size_t left = size;
    while (n < max - 1) {
        const uint8_t *s = left >= FUZZ_SEP_LEN ? memmem(p, left, FUZZ_SEP, FUZZ_SEP_LEN) : NULL;
        if (!s)
            break;
        part[n] = p;
        len[n] = (size_t)(s - p);
        n++;
        left -= (size_t)(s - p) + FUZZ_SEP_LEN;
        p = s + FUZZ_SEP_LEN;
    }
    part[n] = p;
    len[n] = left;
    return n + 1;
}

/* Reads that must happen (so ASan sees them) but whose value is unused. */
static volatile uint8_t fuzz_sink;

static inline void fuzz_touch(const void *p, size_t n)
{
    if (n) {
        const uint8_t *b = p;
        fuzz_sink ^= b[0] ^ b[n - 1];
    }
}

#endif
