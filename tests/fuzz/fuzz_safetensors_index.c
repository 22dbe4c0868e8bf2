/* fuzz_safetensors_index.c - libFuzzer target for sharded checkpoints: the
 * model.safetensors.index.json parser and its cross-checks against the
 * shards (every listed tensor present in the shard the weight map names, no
 * tensor unlisted, names unique across shards).
 *
 * Input: the index JSON, then up to three shard images, separated by
 * FUZZ_SEP; the shards are the files "a.safetensors", "b.safetensors" and
 * "c.safetensors" (the seeds' weight maps name them). Opened through
 * moec_st_open_index_memory, the same code as moec_st_open on an index.
 * Seeds in tests/fuzz/corpus/safetensors_index. */
#include <stdlib.h>

#include "formats/safetensors.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *part[4];
    size_t len[4];
    int n = fuzz_split(data, size, part, len, 4);
    static const char *names[3] = {"a.safetensors", "b.safetensors", "c.safetensors"};
    moec_st_image img[3];
    for (int i = 1; i < n; i++)
        img[i - 1] = (moec_st_image){names[i - 1], part[i], len[i]};
    moec_safetensors *st;
    moec_err err;
    if (moec_st_open_index_memory(&st, (const char *)part[0], len[0], "fuzz", img, (size_t)(n - 1), &err) !=
        MOEC_OK)
        return 0;
    for (size_t i = 0; i < moec_st_count(st); i++) {
        const moec_tensor *t = moec_st_tensor(st, i);
        fuzz_touch(t->data, t->nbytes);
        if (moec_st_find(st, moec_st_name(st, i)) != t)
            abort();
    }
    (void)moec_st_file_bytes(st);
    moec_st_close(st);
    return 0;
}
