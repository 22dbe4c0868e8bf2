#include "merge/average.h"

#include <math.h>
#include <stdlib.h>

moec_status moec_merge_weights_normalise(const float *weights, int m, double *out,
                                         moec_err *err)
{
    if (m < 1 || !out)
        return moec_err_set(err, MOEC_ERR_ARG, "merge weights: need at least one member (got %d)", m);
    if (!weights) {
        for (int e = 0; e < m; e++)
            out[e] = 1.0 / m;
        return MOEC_OK;
    }
    double sum = 0.0;
    for (int e = 0; e < m; e++) {
        if (!isfinite(weights[e]))
            return moec_err_set(err, MOEC_ERR_ARG, "merge weights: weight of member %d is not finite", e);
        if (weights[e] < 0.0f)
            return moec_err_set(err, MOEC_ERR_ARG,
                                "merge weights: weight of member %d is negative (%g); expected a frequency >= 0",
                                e, (double)weights[e]);
        sum += weights[e];
    }
    if (!(sum > 0.0))
        return moec_err_set(err, MOEC_ERR_ARG,
                            "merge weights: all %d weights are zero; expected at least one routed member", m);
    for (int e = 0; e < m; e++)
        out[e] = weights[e] / sum;
    return MOEC_OK;
}

moec_status moec_average_weighted(const float *const *W, int m, size_t n,
                                  const float *weights, float *out, moec_err *err)
{
    if (!W || !out)
        return moec_err_set(err, MOEC_ERR_ARG, "average: NULL member list or output");
    if (m < 1)
        return moec_err_set(err, MOEC_ERR_ARG, "average: need at least one member (got %d)", m);
    for (int e = 0; e < m; e++) {
        if (!W[e])
            return moec_err_set(err, MOEC_ERR_ARG, "average: member %d is NULL", e);
        for (size_t i = 0; i < n; i++)
            if (!isfinite(W[e][i]))
                return moec_err_set(err, MOEC_ERR_NUMERIC,
                                    "average: member %d has a non-finite value at element %zu", e, i);
    }
    double *w = malloc((size_t)m * sizeof *w);
    if (!w)
        return moec_err_set(err, MOEC_ERR_NOMEM, "average: out of memory for %d weights", m);
    moec_status st = moec_merge_weights_normalise(weights, m, w, err);
    if (st != MOEC_OK) {
        free(w);
        moec_err_prefix(err, "average");
        return st;
    }
    for (size_t i = 0; i < n; i++) {
        double acc = 0.0;
        for (int e = 0; e < m; e++)
            acc += w[e] * W[e][i];
        out[i] = (float)acc;
    }
    free(w);
    return MOEC_OK;
}
