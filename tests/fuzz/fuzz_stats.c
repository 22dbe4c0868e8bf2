/* fuzz_stats.c - libFuzzer target for calibration statistics files
 * (docs/stats.md): magic, version, header sizes and tables, domain names,
 * the zstd payload and the shapes it must match.
 *
 * Loads arbitrary bytes with moec_stats_load_mem (the code behind
 * moec_stats_load) and, for statistics it accepts, reads every array of
 * every layer end to end. Built with FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
 * the reader accepts any checksum, so mutations reach the parsing behind
 * them. Seeds in tests/fuzz/corpus/stats. */
#include "calib/stats.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moec_stats *s;
    moec_err err;
    if (moec_stats_load_mem(&s, data, size, "fuzz", &err) != MOEC_OK)
        return 0;
    for (int l = 0; l < s->n_layers; l++) {
        moec_stats_array a[MOEC_STATS_N_ARRAYS];
        int na = moec_layer_stats_arrays(&s->layers[l], s->n_domains, a);
        for (int i = 0; i < na; i++)
            if (a[i].len)
                fuzz_touch(*a[i].p, a[i].len * sizeof(double));
    }
    for (int i = 0; i < s->n_domains; i++)
        fuzz_touch(s->domains[i], 1);
    moec_stats_free(s);
    return 0;
}
