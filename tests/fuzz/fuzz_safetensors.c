/* fuzz_safetensors.c - libFuzzer target for the safetensors header parser.
 *
 * Feeds arbitrary bytes to moec_st_open_memory (the same validation as
 * moec_st_open, without a file) and touches the first and last byte of every
 * tensor it accepts, so that a view reaching outside the input shows up under
 * AddressSanitizer. Not built by CMake. From the repository root:
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Ilib -I. \
 *     tests/fuzz/fuzz_safetensors.c formats/safetensors_read.c lib/core/dtype.c \
 *     lib/core/error.c -lcjson -lutf8proc -lm -o fuzz_safetensors
 *   mkdir -p corpus && cp models/mixtral-tiny/model.safetensors corpus/
 *   ./fuzz_safetensors -max_len=65536 corpus
 *
 * (A seed that big is cut to max_len, which is fine: the header comes first.)
 */
#include <stddef.h>
#include <stdint.h>

#include "formats/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moec_safetensors *st;
    moec_err err;
    if (moec_st_open_memory(&st, data, size, "fuzz", &err) != MOEC_OK)
        return 0;
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < moec_st_count(st); i++) {
        const moec_tensor *t = moec_st_tensor(st, i);
        if (t->nbytes) {
            const uint8_t *p = t->data;
            sink ^= p[0] ^ p[t->nbytes - 1];
        }
        if (moec_st_find(st, moec_st_name(st, i)) != t)
            __builtin_trap();
    }
    (void)moec_st_metadata(st, "format");
    moec_st_close(st);
    return 0;
}
