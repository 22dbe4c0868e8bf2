/* strmap.c - string -> 64-bit value hash map: open addressing over an index
 * array, entries and key bytes kept in insertion order. Holds the vocabulary
 * (150k entries for Qwen) and each call's word cache. */
#include "tokenizer/tok_internal.h"

#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

static size_t find_slot(const tok_strmap *m, const char *key, size_t len, uint64_t h)
{
    size_t i = (size_t)h & m->mask;
    for (;;) {
        uint32_t e = m->slots[i];
        if (!e)
            return i;
        const tok_strmap_ent *ent = &m->ents[e - 1];
        if (ent->hash == h && ent->len == len && memcmp(m->keys.p + ent->off, key, len) == 0)
            return i;
        i = (i + 1) & m->mask;
    }
}

static bool rehash(tok_strmap *m, size_t nslots)
{
    uint32_t *slots = calloc(nslots, sizeof *slots);
    if (!slots)
        return false;
    free(m->slots);
    m->slots = slots;
    m->mask = nslots - 1;
    for (size_t k = 0; k < m->n; k++) {
        size_t i = (size_t)m->ents[k].hash & m->mask;
        while (m->slots[i])
            i = (i + 1) & m->mask;
        m->slots[i] = (uint32_t)(k + 1);
    }
    return true;
}

bool tok_strmap_put(tok_strmap *m, const char *key, size_t len, uint64_t val, bool overwrite)
{
    if (len >= UINT32_MAX / 2 || m->n >= UINT32_MAX - 1)
        return false;
    /* keep the load factor at or below 1/2 */
    if (!m->slots || (m->n + 1) * 2 > m->mask + 1) {
        size_t nslots = m->slots ? (m->mask + 1) * 2 : 64;
        if (!rehash(m, nslots))
            return false;
    }
    uint64_t h = XXH3_64bits(key, len);
    size_t i = find_slot(m, key, len, h);
    if (m->slots[i]) {
        if (overwrite)
            m->ents[m->slots[i] - 1].val = val;
        return true;
    }
    if (m->n == m->cap) {
        size_t c = m->cap ? m->cap * 2 : 64;
        tok_strmap_ent *e = realloc(m->ents, c * sizeof *e);
        if (!e)
            return false;
        m->ents = e;
        m->cap = c;
    }
    size_t off = m->keys.len;
    if (off >= UINT32_MAX - len - 1 || !tok_buf_put(&m->keys, key, len) || !tok_buf_put(&m->keys, "", 1))
        return false;
    m->ents[m->n] = (tok_strmap_ent){ h, val, (uint32_t)off, (uint32_t)len };
    m->slots[i] = (uint32_t)(++m->n);
    return true;
}

const uint64_t *tok_strmap_get(const tok_strmap *m, const char *key, size_t len)
{
    if (!m->slots)
        return NULL;
    uint64_t h = XXH3_64bits(key, len);
    uint32_t e = m->slots[find_slot(m, key, len, h)];
    return e ? &m->ents[e - 1].val : NULL;
}

void tok_strmap_free(tok_strmap *m)
{
    free(m->slots);
    free(m->ents);
    tok_buf_free(&m->keys);
    memset(m, 0, sizeof *m);
}
