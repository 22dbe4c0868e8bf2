/* matmul_gblocks.c - products with weights in llama.cpp's block types:
 * decoded tiles through the float kernels (matmul_gblocks.h). */
#include "exec/matmul_gblocks.h"

#include <stdlib.h>

#include "core/ggml_blocks.h"
#include "core/qformat.h"
#include "exec/matmul.h"

/* Below this many flops a product runs on the caller alone. */
#define PAR_MIN_FLOPS 49152
/* Workers get multiples of this many output rows (64 bytes of y). */
#define ROW_ALIGN 16
/* Float32 bytes per decoded tile: stays in L1/L2 between decode and use. */
#define TILE_BYTES (32 * 1024)

struct gjob {
    moec_pool *pool;
    const moec_qformat *f;
    size_t row_bytes;
    float *y;
    int64_t ldy;
    const float *x;
    int64_t ldx;
    int64_t n;
    int64_t r0, r1, chunk;
    bool acc;
};

/* Decodes one block at a time: no memory beyond the stack. */
static void rows_blockwise(const struct gjob *j, int64_t a, int64_t b)
{
    const moec_gblock_traits *tr = moec_gblock_info(j->f->gblock);
    const int64_t K = j->f->cols;
    float w[MOEC_GB_MAX_BLOCK];
    for (int64_t r = a; r < b; r++) {
        const uint8_t *row = j->f->codes + (size_t)r * j->row_bytes;
        for (int64_t i = 0; i < j->n; i++) {
            float sum = 0.0f;
            for (int64_t c = 0; c < K; c += tr->block) {
                moec_gblock_dequant(j->f->gblock, row + (size_t)(c / tr->block) * (size_t)tr->bytes, w, tr->block);
                for (int k = 0; k < tr->block; k++)
                    sum += w[k] * j->x[i * j->ldx + c + k];
            }
            float *yy = &j->y[i * j->ldy + (r - j->r0)];
            *yy = j->acc ? *yy + sum : sum;
        }
    }
}

/* Rows [a, b) on share `thread` of j->pool (its scratch holds the tile). */
static void grows(const struct gjob *j, int thread, int64_t a, int64_t b)
{
    const int64_t K = j->f->cols;
    int64_t tile_rows = TILE_BYTES / (K * (int64_t)sizeof(float));
    if (tile_rows < ROW_ALIGN)
        tile_rows = ROW_ALIGN;
    if (tile_rows > b - a)
        tile_rows = b - a;
    const size_t bytes = (size_t)(tile_rows * K) * sizeof(float);
    float *tile = j->pool ? moec_pool_scratch(j->pool, thread, bytes) : NULL;
    const bool own = !tile;
    if (own && !(tile = malloc(bytes))) {
        rows_blockwise(j, a, b);
        return;
    }
    for (int64_t r = a; r < b; r += tile_rows) {
        const int64_t tr = b - r < tile_rows ? b - r : tile_rows;
        moec_qformat_dequant_rows(j->f, r, r + tr, tile);
        const moec_tensor t = {.dtype = MOEC_DT_F32, .ndim = 2, .shape = {tr, K}, .data = tile,
                               .nbytes = (size_t)(tr * K) * sizeof(float)};
        /* on the caller (no pool): this worker is already one of the pool's */
        moec_matmul_ex(NULL, j->y + (r - j->r0), j->ldy, j->x, j->ldx, j->n, &t, 0, tr, j->acc);
    }
    if (own)
        free(tile);
}

static void gworker(void *ctx, int thread, int n_threads)
{
    (void)n_threads;
    const struct gjob *j = ctx;
    const int64_t a = j->r0 + (int64_t)thread * j->chunk;
    if (a < j->r1)
        grows(j, thread, a, a + j->chunk < j->r1 ? a + j->chunk : j->r1);
}

void moec_matmul_gblocks(moec_pool *pool, float *y, int64_t ldy, const float *x, int64_t ldx, int64_t n,
                         const moec_tensor *W, int64_t r0, int64_t r1, bool accumulate)
{
    const moec_qformat *f = W->q;
    const int64_t rows = r1 - r0;
    if (n <= 0 || rows <= 0)
        return;
    struct gjob j = {.pool = pool, .f = f, .row_bytes = moec_gblock_row_bytes(f->gblock, f->cols), .y = y,
                     .ldy = ldy, .x = x, .ldx = ldx, .n = n, .r0 = r0, .r1 = r1, .chunk = rows, .acc = accumulate};
    const int nt = moec_pool_size(pool);
    if (2.0 * (double)n * (double)rows * (double)f->cols < PAR_MIN_FLOPS) {
        /* on the caller, outside any run: the pool's scratch may be someone else's */
        j.pool = NULL;
        gworker(&j, 0, 1);
        return;
    }
    if (nt > 1) {
        const int64_t per = (rows + nt - 1) / nt;
        j.chunk = (per + ROW_ALIGN - 1) / ROW_ALIGN * ROW_ALIGN;
    }
    moec_pool_run(pool, gworker, &j);
}

void moec_matmul_gblocks_share(moec_pool *pool, int thread, float *y, int64_t ldy, const float *x, int64_t ldx,
                               int64_t n, const moec_tensor *W, int64_t r0, int64_t r1, bool accumulate)
{
    const moec_qformat *f = W->q;
    if (n <= 0 || r1 <= r0)
        return;
    struct gjob j = {.pool = pool, .f = f, .row_bytes = moec_gblock_row_bytes(f->gblock, f->cols), .y = y,
                     .ldy = ldy, .x = x, .ldx = ldx, .n = n, .r0 = r0, .r1 = r1, .chunk = r1 - r0, .acc = accumulate};
    grows(&j, thread, r0, r1);
}
