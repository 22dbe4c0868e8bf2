/* safetensors.h - Hugging Face safetensors checkpoints: an mmap'd reader and
 * a streaming writer.
 *
 * File layout: an 8-byte little-endian header length N, N bytes of JSON
 * {"__metadata__": {str: str}, NAME: {"dtype", "shape", "data_offsets"}},
 * then the data section; data_offsets [begin, end) are relative to it.
 * A sharded checkpoint is a directory with model.safetensors.index.json
 * ({"metadata": {"total_size": ...}, "weight_map": {NAME: SHARD_FILE}}) and
 * the shard files it names.
 */
#ifndef MOEC_FORMATS_SAFETENSORS_H
#define MOEC_FORMATS_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tensor.h"

/* Largest JSON header (and index file) accepted; larger ones are treated as
 * corrupt rather than allocated. Same limit as the reference implementation. */
#define MOEC_ST_MAX_HEADER 100000000u

/* ---- reader ------------------------------------------------------------ */

typedef struct moec_safetensors moec_safetensors;

/* Opens a checkpoint. path is one of
 *   - a .safetensors file,
 *   - a model.safetensors.index.json file (sharded; shards beside it),
 *   - a directory holding model.safetensors or, failing that,
 *     model.safetensors.index.json (the order transformers uses).
 * Every shard is mmap'd read-only and every header fully validated before
 * this returns: JSON shape and field types, dtype names (all safetensors
 * dtypes are accepted and typed, non-float ones included; an unknown name is
 * an error), shapes (non-negative integers, at most MOEC_MAX_DIMS dims,
 * element count without overflow), data_offsets (begin <= end <= data
 * section), byte length == element count * dtype size, no two tensors
 * overlapping, names unique across all shards, and for an index: shard names
 * are plain file names (no '/', no ".."), every weight_map entry exists and
 * every tensor lives in the shard the weight_map names.
 * Gaps between tensors and trailing bytes after the last one are accepted.
 *
 * Errors: MOEC_ERR_IO (cannot open/stat/mmap, directory without a
 * checkpoint), MOEC_ERR_FORMAT (any validation failure), MOEC_ERR_UNSUPPORTED
 * (more than MOEC_MAX_DIMS dimensions), MOEC_ERR_NOMEM. The message names the
 * file and, where one is involved, the tensor.
 * On success *out owns the mappings; free with moec_st_close. */
moec_status moec_st_open(moec_safetensors **out, const char *path, moec_err *err);

/* Parses one safetensors image already in memory (size bytes at data) with
 * the same validation as moec_st_open; label names it in error messages.
 * Nothing is copied: tensors point into data, which the caller keeps valid
 * and unchanged until moec_st_close. Used by the fuzzer and by callers that
 * hold a file image. */
moec_status moec_st_open_memory(moec_safetensors **out, const void *data, size_t size,
                                const char *label, moec_err *err);

/* One shard image in memory for moec_st_open_index_memory: the bytes of
 * the file the index names `name`. */
typedef struct moec_st_image {
    const char *name;
    const void *data;
    size_t size;
} moec_st_image;

/* Parses a sharded checkpoint held in memory: json (len bytes, need not be
 * NUL-terminated) is the model.safetensors.index.json text and images the
 * shard files it may name, found by file name; a shard the index names but
 * images lack fails as a missing file would (MOEC_ERR_IO). The same
 * validation as moec_st_open on an index; nothing is copied (images stay
 * valid until moec_st_close). label stands for the directory in messages.
 * Used by the fuzzer. */
moec_status moec_st_open_index_memory(moec_safetensors **out, const char *json, size_t len,
                                      const char *label, const moec_st_image *images,
                                      size_t n_images, moec_err *err);

/* Unmaps everything; every tensor view and string obtained from st dies with
 * it. NULL is a no-op. */
void moec_st_close(moec_safetensors *st);

size_t moec_st_count(const moec_safetensors *st);

/* Tensors are indexed 0..count-1 in strcmp order of their names. The name
 * and the tensor are owned by st. i must be < count. */
const char *moec_st_name(const moec_safetensors *st, size_t i);

/* A view into the mapping: shape, dtype and nbytes as the header says, data
 * pointing at the first byte (q is NULL). A 0-d scalar comes back with
 * ndim == 0 and nbytes == dtype size, so moec_tensor_present() is false for
 * it and only nbytes tells it from an absent tensor; a tensor with a zero in
 * its shape has nbytes == 0.
 * Alignment: data is aligned only as the file lays it out. In an arbitrary
 * file the header length is arbitrary, so data may be only 1-byte aligned;
 * load through memcpy or check alignment before casting. Files written by
 * moec_st_writer_write align every tensor to its element size, and every
 * tensor whose byte size is a multiple of 64 to 64 bytes.
 * The mapping is shared with the file: if another process truncates the
 * file while it is open, touching the data raises SIGBUS. */
const moec_tensor *moec_st_tensor(const moec_safetensors *st, size_t i);

/* Binary search by name; NULL if absent. */
const moec_tensor *moec_st_find(const moec_safetensors *st, const char *name);

/* Index of name in 0..count-1, or -1 if absent. */
ptrdiff_t moec_st_index(const moec_safetensors *st, const char *name);

/* A value of the "__metadata__" object of the first shard (in file name
 * order); NULL if absent. Owned by st. */
const char *moec_st_metadata(const moec_safetensors *st, const char *key);

/* Total size in bytes of all shard files (the index file not counted). */
uint64_t moec_st_file_bytes(const moec_safetensors *st);

/* When [p, p + n) lies in one of st's file mappings, releases its whole
 * pages from the process (core/fsutil.h moec_release_pages; the data stays
 * readable, it is read from the file again when touched) and returns true;
 * otherwise does nothing and returns false. Memory given to
 * moec_st_open_memory is never released. */
bool moec_st_release(const moec_safetensors *st, const void *p, size_t n);

/* ---- writer ------------------------------------------------------------ */

typedef struct moec_st_writer moec_st_writer;

/* A writer with metadata {"format": "pt"}, which transformers expects of a
 * PyTorch checkpoint. NULL when out of memory. Free with
 * moec_st_writer_free. */
moec_st_writer *moec_st_writer_new(void);
void moec_st_writer_free(moec_st_writer *w);

/* Records a tensor under name. The name and the view are copied; the data is
 * referenced, not copied, and must stay valid until moec_st_writer_write
 * returns. When the bytes will come later through moec_st_writer_put,
 * t->data may be NULL (shape, dtype and nbytes still describe them). t->dtype must be a safetensors dtype (not MOEC_DT_QUANT); shape
 * entries non-negative; t->nbytes == element count * dtype size; a 0-d
 * scalar is ndim == 0 with nbytes == dtype size (as the reader returns it).
 * name must be non-empty valid UTF-8 and not "__metadata__".
 * Errors: MOEC_ERR_ARG (bad tensor or name, duplicate name),
 * MOEC_ERR_NOMEM. */
moec_status moec_st_writer_add(moec_st_writer *w, const char *name, const moec_tensor *t,
                               moec_err *err);

/* Sets (or replaces) one "__metadata__" entry, written into every shard.
 * key and value are copied and must be valid UTF-8. */
moec_status moec_st_writer_set_metadata(moec_st_writer *w, const char *key, const char *value,
                                        moec_err *err);

/* Writes the recorded tensors into the existing directory dir.
 * Sharding follows name order: when shard_bytes == 0 or all tensor data fits
 * in shard_bytes, one "model.safetensors"; otherwise tensors are packed in
 * name order into "model-00001-of-0000N.safetensors", ... (a shard is closed
 * before the tensor that would take it past shard_bytes; a larger tensor
 * gets a shard of its own), plus "model.safetensors.index.json" with
 * metadata.total_size (tensor bytes) and weight_map, as transformers writes
 * it.
 * Layout of each file: header keys in name order; the header padded with
 * spaces so the data section starts at a file offset multiple of 64; tensor
 * data without gaps (the reference reader rejects gaps), ordered so that
 * tensors whose byte size is a multiple of 64 come first (each then starts on
 * a 64-byte boundary), the rest by decreasing element size (each aligned to
 * its element size).
 * Atomicity: each file is streamed to a temporary name in dir, fsync'd, and
 * only when all are complete renamed into place (then dir is fsync'd). On any
 * failure the temporaries and any file this call already renamed are removed.
 * After success a stale checkpoint of the other form in dir (a
 * model.safetensors beside a new index, or an index beside a new single
 * file) is removed so that dir holds exactly one checkpoint; older shard
 * files no longer named by the index are left alone.
 * Errors: MOEC_ERR_IO (dir missing or not writable, write/fsync/rename
 * failure), MOEC_ERR_ARG (a tensor without data), MOEC_ERR_NOMEM. The
 * writer can be written again afterwards. */
moec_status moec_st_writer_write(moec_st_writer *w, const char *dir, size_t shard_bytes,
                                 moec_err *err);

/* The same files written as the data arrives, for callers that produce one
 * tensor (or one layer) at a time: begin lays out every added tensor
 * exactly as moec_st_writer_write does and creates the temporary files with
 * their headers; put writes one tensor's bytes (any order, each once; t
 * must have the dtype, shape and size it was added with; the bytes may be
 * freed when it returns, and they are flushed to disk and
 * dropped from the page cache as they go); finish checks that every tensor
 * was put, then syncs, renames and cleans up as write does. No tensor can
 * be added after begin. moec_st_writer_free before finish removes the
 * temporary files. The resulting files are byte for byte those of
 * moec_st_writer_write. */
moec_status moec_st_writer_begin(moec_st_writer *w, const char *dir, size_t shard_bytes,
                                 moec_err *err);
moec_status moec_st_writer_put(moec_st_writer *w, const char *name, const moec_tensor *t,
                               moec_err *err);
moec_status moec_st_writer_finish(moec_st_writer *w, moec_err *err);

#endif
