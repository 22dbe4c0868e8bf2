/* lowrank.c - dense or factored weight products (lowrank.h). */
#include "exec/lowrank.h"

#include "exec/matmul.h"

void moec_weight_matmul(moec_pool *pool, float *y, const float *x, int64_t n, const moec_tensor *dense,
                        const moec_factored *fw, float *t, bool accumulate)
{
    if (!fw || !moec_factored_present(fw)) {
        moec_matmul(pool, y, x, n, dense, accumulate);
        return;
    }
    moec_matmul(pool, t, x, n, &fw->v, false);
    moec_matmul(pool, y, t, n, &fw->u, accumulate);
}

static int64_t rank_of(const moec_factored *fw)
{
    return moec_factored_present(fw) && fw->u.ndim == 2 ? fw->u.shape[1] : 0;
}

int64_t moec_model_max_rank(const moec_model *m)
{
    int64_t r = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int e = 0; e < m->layers[l].n_experts; e++) {
            const moec_ffn *f = &m->layers[l].experts[e];
            const int64_t k[3] = {rank_of(&f->w1f), rank_of(&f->w3f), rank_of(&f->w2f)};
            for (int i = 0; i < 3; i++)
                r = k[i] > r ? k[i] : r;
        }
    return r;
}
