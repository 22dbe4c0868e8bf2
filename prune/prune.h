/* prune.h - dropping whole experts from an MoE: the frequency baseline,
 * STUN, DERN and EASY-EP (methods.md; each method's file says how it reads
 * its paper and where moec departs from it).
 *
 * Every method takes a source model and calibration statistics
 * (lib/calib/stats.h) and returns a new model derived from the source:
 * the kept experts, in increasing order of their original index, with the
 * router rows of the dropped ones removed, everything else shared with the
 * source. Views of untouched tensors point into the source, so the source
 * must outlive the result; tensors a method changes (router, DERN's
 * recombined experts, STUN's sparsified experts) are owned by the result.
 * Close the result with moec_model_close and release the report with
 * moec_prune_report_free. Save it with moec_model_save_hf, or let the
 * method write it as it builds it (opts.out_dir): the layers then go
 * through the layer-streaming pipeline (lib/pipeline) one at a time, each
 * written and released before the next, so a checkpoint larger than memory
 * can be pruned (the result returned then holds no layer tensors).
 *
 * Allocation over layers:
 *  - MOEC_PRUNE_UNIFORM (default): the same number of experts in every MoE
 *    layer, so the result is a plain HF checkpoint any tool loads.
 *  - MOEC_PRUNE_GLOBAL: one budget over all MoE layers (STUN's paper). Each
 *    layer keeps at least min(top_k, E) experts, so top_k never changes. The
 *    per-layer counts go to config.json as "moec_layer_experts" when they
 *    differ: moec reads that checkpoint, transformers and llama.cpp do not,
 *    and the report says so.
 * When a layer keeps fewer experts than top_k (uniform --keep below top_k),
 * top_k is lowered to the smallest count kept and the report notes it.
 *
 * Statistics of another model, or of this model before a transformation
 * changed its routers, are refused (moec_stats_check).
 */
#ifndef MOEC_PRUNE_PRUNE_H
#define MOEC_PRUNE_PRUNE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "calib/stats.h"
#include "core/error.h"
#include "model/model.h"

struct cJSON;

typedef enum moec_prune_alloc {
    MOEC_PRUNE_UNIFORM = 0, /* same count per MoE layer: loadable by any HF tool */
    MOEC_PRUNE_GLOBAL       /* one budget over all MoE layers; per-layer counts in "moec_layer_experts" */
} moec_prune_alloc;

typedef struct moec_prune_opts {
    /* How many experts remain. keep > 0: experts kept per MoE layer
     * (uniform) or keep x (MoE layers) in total (global). keep == 0: ratio,
     * the fraction of experts removed, in (0, 1): each layer keeps
     * E - round(ratio * E) (uniform), or the model keeps
     * sum E - round(ratio * sum E) (global). No default: one must be set. */
    int keep;
    double ratio;
    moec_prune_alloc alloc;       /* default MOEC_PRUNE_UNIFORM */

    /* STUN */
    double stun_mix;              /* lambda, weight of the co-selection term in the
                                   * behavioural distance; 0 = router rows only; default 1 */
    double sparsity;              /* stage 2: fraction of each kept expert's weights zeroed
                                   * per output row by Wanda, in [0, 1); default 0 (stage 1 only) */
    const int32_t *calib_tokens;  /* stage 2 calibration text as token ids (required when
                                   * sparsity > 0), cut into windows of calib_ctx tokens */
    size_t n_calib_tokens;
    int calib_ctx;                /* default 256 */
    int threads;                  /* executor threads for stage 2; default 1 */

    /* DERN */
    double dern_alpha;            /* segments whose best cosine similarity is below alpha
                                   * are discarded; default 0.5 (the paper studies 0.4-0.6) */

    /* EASY-EP */
    const char *const *domains;   /* calibration domains to score on, by name (a statistics
                                   * domain "drama.train.txt" also answers to "drama");
                                   * NULL: every domain of every statistics */
    int n_domains;

    /* Output: NULL keeps the whole result in memory (default); else the
     * HF directory written layer by layer while the model is built
     * (model_sink.h: shards above shard_bytes, 0 = one file; an existing
     * directory replaced only with overwrite). */
    const char *out_dir;
    size_t shard_bytes;
    bool overwrite;
} moec_prune_opts;

#define MOEC_PRUNE_OPTS_DEFAULT {0, 0.0, MOEC_PRUNE_UNIFORM, 1.0, 0.0, NULL, 0, 256, 1, 0.5, NULL, 0, NULL, 0, false}

#define MOEC_PRUNE_MAX_NOTES 8
#define MOEC_PRUNE_NOTE_MAX 320

typedef struct moec_prune_layer {
    int n_before;   /* experts before (0: a dense layer, nothing below is set) */
    int n_after;    /* experts after */
    int *kept;      /* [n_after] original index of output expert i */
    int *group;     /* [n_before] output expert that took over original expert e
                     * (itself when kept; STUN: its cluster's representative;
                     * DERN: the kept expert that received most of its segments),
                     * -1 when nothing took it over */
    double *score;  /* [n_before] the method's score (what was ranked or clustered on) */
    int *segments;  /* DERN: [n_after] segments merged into output expert i; else NULL */
} moec_prune_layer;

typedef struct moec_prune_report {
    const char *method;           /* "freq", "stun", "dern", "easyep" (static) */
    const char *score_name;       /* what layers[].score holds (static) */
    moec_prune_alloc alloc;
    bool non_uniform;             /* the result has different counts per layer */
    int n_layers;
    moec_prune_layer *layers;     /* [n_layers] */
    int top_k_before, top_k_after;
    int64_t params_before, params_after;
    uint64_t bytes_before, bytes_after;
    double seconds;

    /* STUN */
    double stun_mix, stun_tau;    /* tau: the bisected global threshold; NaN with uniform allocation,
                                   * whose per-layer thresholds are listed in the notes */
    double sparsity_requested;
    double sparsity_achieved;     /* zeros / weights over the kept experts' matrices */
    int64_t wanda_weights, wanda_zeros;
    int wanda_skipped;            /* kept experts left dense: no calibration token reached them */

    /* DERN */
    double dern_alpha;
    int64_t segments, segments_assigned, segments_discarded;
    double dern_sim_sum, dern_sim_max; /* best-match cosine of every segment: sum and max */

    /* EASY-EP */
    int domains;

    int n_notes;
    char notes[MOEC_PRUNE_MAX_NOTES][MOEC_PRUNE_NOTE_MAX];
} moec_prune_report;

/* The methods. All share the contract above. *out is written only on
 * success; rep is zeroed at the start and filled as the method goes, so
 * release it with moec_prune_report_free after success and failure alike.
 * Errors: MOEC_ERR_ARG (options: keep out of range, a global budget below
 * top_k per layer, bad sparsity or alpha, missing calibration tokens, an
 * unknown EASY-EP domain), MOEC_ERR_MISMATCH (statistics of another model),
 * MOEC_ERR_UNSUPPORTED (quantized weights), MOEC_ERR_NOMEM. */

/* Baseline: keep the most often selected experts (count, ties: gate_sum). */
moec_status moec_prune_freq(const moec_model *src, const moec_stats *stats, const moec_prune_opts *opts,
                            moec_model **out, moec_prune_report *rep, moec_err *err);

/* STUN: behaviour-similarity clustering, one representative per cluster,
 * then Wanda inside the kept experts when opts->sparsity > 0. */
moec_status moec_prune_stun(const moec_model *src, const moec_stats *stats, const moec_prune_opts *opts,
                            moec_model **out, moec_prune_report *rep, moec_err *err);

/* DERN: drop by router-weighted frequency, recombine the dropped experts'
 * neurons into the kept ones. */
moec_status moec_prune_dern(const moec_model *src, const moec_stats *stats, const moec_prune_opts *opts,
                            moec_model **out, moec_prune_report *rep, moec_err *err);

/* EASY-EP: output-aware importance weighted by token contribution. The
 * domains are those of the statistics (moec-calib makes one per text file;
 * statistics without domains count as one), from one or several statistics
 * of this model, optionally narrowed to opts->domains. Several domains are
 * mixed by normalising each domain's scores per layer to sum 1 and
 * averaging. */
moec_status moec_prune_easyep(const moec_model *src, const moec_stats *const *stats, int n_stats,
                              const moec_prune_opts *opts, moec_model **out, moec_prune_report *rep,
                              moec_err *err);

/* Frees what the report's arrays hold (not rep itself); zeroes it. */
void moec_prune_report_free(moec_prune_report *rep);

/* The report as a new cJSON object (caller frees with cJSON_Delete), NULL
 * when out of memory: method, allocation, layers [{layer, experts_before,
 * experts_after, kept [original indices], group, score}], top_k_before/after,
 * params and bytes before/after, seconds, method fields, notes. */
struct cJSON *moec_prune_report_json(const moec_prune_report *rep);

/* ---- building blocks shared by the method files (prune_common.c) ---- */

/* Checks that stats belong to m (moec_stats_check: architecture, shapes,
 * router fingerprint) and carry the routing sums every method reads. */
moec_status moec_prune_check_stats(const moec_model *m, const moec_stats *stats, moec_err *err);

/* Resolves keep / ratio / alloc into a number of experts per layer chosen by
 * ranking: every MoE layer l has E_l experts and a score per expert
 * (primary[l][e], ties: secondary[l][e] when not NULL, then the lower index).
 * Uniform: each layer keeps its top N_l. Global: each layer first keeps its
 * top min(top_k, E_l), then the remaining budget goes to the largest shares
 * primary / sum over the layer (ties: lower layer, lower index).
 * keep_mask[l][e] is set to true for kept experts (arrays of E_l, caller's).
 * primary/secondary/keep_mask are indexed [layer]; dense layers' entries are
 * ignored. */
moec_status moec_prune_select(const moec_model *m, const moec_prune_opts *opts, const double *const *primary,
                              const double *const *secondary, bool **keep_mask, moec_err *err);

/* The number of experts each layer keeps under opts (uniform), or the total
 * budget and per-layer floors (global). n_keep[l] is set for MoE layers;
 * *total is the global budget. */
moec_status moec_prune_budget(const moec_model *m, const moec_prune_opts *opts, int *n_keep, int *total,
                              moec_err *err);

/* Builds the derived model keeping, in each MoE layer, the experts whose
 * keep_mask entry is set (in increasing original index), with their router
 * rows; lowers top_k when a layer keeps fewer than top_k experts (noted in
 * rep). Fills rep's per-layer kept lists, n_before/n_after, top_k and the
 * "before" figures, and group[] as the identity for kept experts, -1 else. */
moec_status moec_prune_apply(const moec_model *src, bool *const *keep_mask, moec_model **out,
                             moec_prune_report *rep, moec_err *err);

/* A keep mask [n_layers][E_l] (all false), freed with moec_prune_mask_free. */
bool **moec_prune_mask_new(const moec_model *m);
void moec_prune_mask_free(bool **mask, int n_layers);

/* Zeroes rep, names the method and copies opts (NULL: the defaults) into *o. */
void moec_prune_begin(moec_prune_report *rep, const char *method, const char *score_name,
                      const moec_prune_opts *opts, moec_prune_opts *o);

/* Fills the "after" figures from the result's layout (before its layers are
 * built: no method changes a shape or dtype). */
void moec_prune_measure(moec_prune_report *rep, const moec_model *out);

/* Builds and writes the result m (from moec_prune_apply) layer by layer:
 * ops.layer (may be NULL) finishes each layer of m from src; with
 * calibration windows (ids may be NULL) they run through m, the
 * expert-pruned model, one layer at a time. When o->out_dir is set the
 * layers go to that HF directory as they are finished and leave memory
 * (m keeps none), src's pages are released as it goes, and the directory
 * is complete when this returns. */
struct moec_pipeline_ops;
moec_status moec_prune_build(const moec_model *src, moec_model *m, const moec_prune_opts *o, const int32_t *ids,
                             const int *window_len, int n_windows, const struct moec_pipeline_ops *ops, void *ctx,
                             moec_err *err);

/* The time since t0 (moec_prune_now()) and the notes that follow from the
 * result (non-uniform counts). */
void moec_prune_finish(moec_prune_report *rep, double t0);

/* Monotonic seconds. */
double moec_prune_now(void);

/* Appends a note (printf-style) to the report; silently dropped past
 * MOEC_PRUNE_MAX_NOTES. */
void moec_prune_note(moec_prune_report *rep, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Reads row r of a 2-D weight (or all of a 1-D one when r == 0) as floats.
 * The tensor must have a compute dtype. */
void moec_prune_row_f32(const moec_tensor *t, int64_t r, float *dst);

/* Makes dst an owned copy of src's shape and dtype in m, filled from the
 * float array vals ([rows][cols]), rounding to the stored dtype. */
moec_status moec_prune_tensor_from_f32(moec_model *m, moec_tensor *dst, const moec_tensor *src, const float *vals,
                                       moec_err *err);

#endif
