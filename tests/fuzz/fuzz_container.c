/* fuzz_container.c - libFuzzer target for the .moec container reader:
 * header, directory, section table, zstd chunk tables and frames, blobs.
 *
 * Opens arbitrary bytes with moec_container_open_mem, eagerly and lazily
 * verified, and for every tensor it accepts reads every section whole and in
 * a part straddling a chunk boundary, touches raw views and blobs, so a view
 * or a decode reaching outside the input shows up under AddressSanitizer.
 *
 * Built with FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION (CMake's MOEC_FUZZ
 * build) the reader accepts any checksum; otherwise nearly every mutation
 * would stop at the first checksum and the parsing behind it would never be
 * exercised. Seeds (small containers with raw and multi-chunk zstd sections
 * of every storage type, and blobs) in tests/fuzz/corpus/container. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "formats/container.h"
#include "fuzz_util.h"

static void exercise(const moec_container *c)
{
    moec_err err;
    for (size_t i = 0; i < moec_container_tensor_count(c); i++) {
        const moec_ctensor_info *ti = moec_container_tensor(c, i);
        if (moec_container_find(c, ti->name) != (int64_t)i)
            abort(); /* names are unique, so lookup must find this one */
        moec_tensor view;
        if (moec_container_tensor_view(c, i, &view, &err) == MOEC_OK)
            fuzz_sink ^= ((const uint8_t *)view.data)[view.nbytes - 1];
        for (int k = 0; k < ti->n_sections; k++) {
            const moec_csection_info *si = &ti->sections[k];
            const void *p;
            size_t n;
            void *owned;
            if (si->size > (1u << 24))
                continue; /* decoding is bounded by size; keep runs fast */
            if (moec_container_section_get(c, i, si->kind, &p, &n, &owned, &err) != MOEC_OK)
                continue;
            if (n != si->size)
                abort();
            fuzz_sink ^= ((const uint8_t *)p)[0] ^ ((const uint8_t *)p)[n - 1];
            uint64_t off = si->chunk_size ? si->chunk_size - 1 : n / 2;
            if (off < n) {
                size_t len = n - off < 3 ? (size_t)(n - off) : 3;
                uint8_t part[3];
                if (moec_container_section_read(c, i, si->kind, off, part, len, &err) ==
                        MOEC_OK &&
                    memcmp(part, (const uint8_t *)p + off, len) != 0)
                    abort(); /* a partial read must agree with the whole */
            }
            free(owned);
        }
    }
    for (size_t i = 0; i < moec_container_blob_count(c); i++) {
        const void *p;
        size_t n;
        if (moec_container_blob(c, moec_container_blob_name(c, i), &p, &n, &err) == MOEC_OK &&
            n)
            fuzz_sink ^= ((const uint8_t *)p)[0] ^ ((const uint8_t *)p)[n - 1];
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned flags[] = {0, MOEC_CONTAINER_LAZY_VERIFY};
    for (size_t f = 0; f < sizeof flags / sizeof *flags; f++) {
        moec_container *c;
        moec_err err;
        if (moec_container_open_mem(data, size, "fuzz", flags[f], &c, &err) != MOEC_OK)
            continue;
        exercise(c);
        moec_container_close(c);
    }
    return 0;
}
