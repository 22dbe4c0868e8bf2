/* fuzz_moec_model.c - libFuzzer target for a .moec container read as a
 * model: the embedded config.json, tokenizer and side-file blobs, and every
 * tensor bound to the slot its name claims (presence, shape, storage type,
 * group-wise parameters and scales), raw sections in place and zstd
 * sections decoded (moec_model_from_container, the part of moec_model_open
 * after the container reader).
 *
 * For a model that opens: its parameter and byte counts, the NaN/Inf check
 * over every tensor, and the first and last row of every quantized tensor
 * dequantized, so codes, scales and zeros are all read. Checksums are
 * skipped as in fuzz_container. Seeds (tiny models with float and
 * quantized, raw and compressed tensors) in tests/fuzz/corpus/moec_model. */
#include <stdlib.h>

#include "core/qformat.h"
#include "formats/container.h"
#include "fuzz_util.h"
#include "model/check.h"
#include "model/model.h"
#include "model/model_moec.h"

static moec_status touch_slot(void *ctx, const moec_slot *s, moec_err *err)
{
    (void)ctx;
    (void)err;
    const moec_tensor *t = s->t;
    if (!moec_tensor_present(t))
        return MOEC_OK;
    if (t->dtype == MOEC_DT_QUANT) {
        const moec_qformat *q = t->q;
        if (q->cols > (1 << 16))
            return MOEC_OK;
        float *row = malloc((size_t)q->cols * sizeof *row);
        if (row) {
            moec_qformat_dequant_row(q, 0, row);
            moec_qformat_dequant_row(q, q->rows - 1, row);
            fuzz_touch(row, (size_t)q->cols * sizeof *row);
            free(row);
        }
    } else {
        fuzz_touch(t->data, t->nbytes);
    }
    return MOEC_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moec_container *ct;
    moec_err err;
    if (moec_container_open_mem(data, size, "fuzz", 0, &ct, &err) != MOEC_OK)
        return 0;
    moec_model *m;
    if (moec_model_from_container(&m, ct, "fuzz", &err) != MOEC_OK)
        return 0; /* ct was closed */
    fuzz_sink ^= (uint8_t)moec_model_params(m) ^ (uint8_t)moec_model_bytes(m);
    (void)moec_model_check_finite(m, &err);
    moec_model_for_each_slot(m, touch_slot, NULL, &err);
    if (m->tokenizer_json)
        fuzz_touch(m->tokenizer_json, m->tokenizer_json_len);
    moec_model_close(m);
    return 0;
}
