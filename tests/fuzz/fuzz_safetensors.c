/* fuzz_safetensors.c - libFuzzer target for the safetensors header parser.
 *
 * Feeds arbitrary bytes to moec_st_open_memory (the same validation as
 * moec_st_open, without a file) and touches the first and last byte of every
 * tensor it accepts, so that a view reaching outside the input shows up under
 * AddressSanitizer; lookups by name must find what the listing holds.
 * Built by CMake with -DMOEC_FUZZ=ON (scripts/fuzz.sh); seeds in
 * tests/fuzz/corpus/safetensors. */
#include <stdlib.h>

#include "formats/safetensors.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moec_safetensors *st;
    moec_err err;
    if (moec_st_open_memory(&st, data, size, "fuzz", &err) != MOEC_OK)
        return 0;
    for (size_t i = 0; i < moec_st_count(st); i++) {
        const moec_tensor *t = moec_st_tensor(st, i);
        fuzz_touch(t->data, t->nbytes);
        if ((const uint8_t *)t->data < data || (const uint8_t *)t->data + t->nbytes > data + size)
            abort(); /* a view outside the image */
        if (moec_st_find(st, moec_st_name(st, i)) != t)
            abort();
    }
    (void)moec_st_metadata(st, "format");
    moec_st_close(st);
    return 0;
}
