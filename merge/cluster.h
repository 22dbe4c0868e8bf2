/* cluster.h - which experts to merge: output similarities from calibration
 * inputs, and Sub-MoE's multi-layer adaptive allocation.
 *
 * Similarity (the paper's Eq. 2): for calibration tokens t, the mean over t
 * of cos(y_i(h_t), y_j(h_t)) for every pair of experts, every expert run on
 * every token (selected or not). Across two layers l and l+1 the pair is
 * cos(y_i^l(h_t^l), y_j^{l+1}(h_t^{l+1})): both outputs are written into the
 * same residual stream for the same token. A zero output has cosine 0.
 *
 * Multi-layer adaptive allocation (the paper's "jointly cluster multi-layer
 * experts under a target overall compression ratio", 2 layers measured
 * best in its Table 3): the experts of layers l and l+1 are clustered
 * together by kernel K-means on their joint similarity matrix; within each
 * cluster the members of each layer form one group of that layer, so a
 * layer's group count is the number of clusters holding any of its
 * experts and layers whose experts are alike end up with fewer groups. The
 * paper gives no rule for meeting the budget exactly; here K, the number of
 * clusters, is the largest for which the two layers' group counts sum to
 * at most the target N_l + N_{l+1}, and when the sum falls short, groups are
 * split (the member farthest from its group's mean, in the layer whose
 * split lowers the within-group spread most) until it is met, each layer
 * staying within 1..E.
 */
#ifndef MOEC_MERGE_CLUSTER_H
#define MOEC_MERGE_CLUSTER_H

#include <stdint.h>

#include "core/error.h"
#include "core/threadpool.h"
#include "merge/kmeans.h"
#include "model/model.h"

/* gram[n][n], n = Σ E_i over n_layers (1 or more) layers, experts of layer 0
 * first: mean over the first n_tokens rows of x[i] ([n_tokens][d], the
 * inputs of layers[i] on the same tokens) of the cosines above. Experts
 * must be dense or factored as the executor runs them. */
moec_status moec_merge_similarity(moec_pool *pool, const moec_layer *const *layers, const float *const *x,
                                  int n_layers, int64_t n_tokens, int d, float *gram, moec_err *err);

/* Joint clustering of two layers with E0 and E1 experts (gram [E0+E1]^2 as
 * above, freq [E0+E1] routing counts for frequency seeding) into groups
 * whose counts sum to target (2 <= target <= E0 + E1). Fills assign0[E0],
 * assign1[E1] (groups numbered by first appearance within each layer) and
 * n0, n1. info (may be NULL): the K-means run that was kept. */
moec_status moec_merge_cluster_joint(const float *gram, int E0, int E1, const float *freq, int target,
                                     const moec_kmeans_opts *opts, int *assign0, int *assign1, int *n0, int *n1,
                                     moec_kmeans_info *info, moec_err *err);

#endif
