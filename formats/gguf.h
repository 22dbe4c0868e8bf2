/* gguf.h - GGUF version 3, llama.cpp's model file: a reader and a writer.
 *
 * Written from the format's public description (ggml's docs/gguf.md and
 * gguf.h's header comment). A file is, little-endian throughout:
 *
 *   "GGUF" u32 version (3) | u64 n_tensors | u64 n_kv
 *   n_kv x       { string key | u32 value type | value }
 *   n_tensors x  { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset }
 *   zero padding to `alignment`, then the tensor data blob
 *
 * string = u64 length + bytes (no NUL); value types 0..12 = u8, i8, u16,
 * i16, u32, i32, f32, bool (one byte, 0 or 1), string, array, u64, i64, f64;
 * an array is u32 element type + u64 count + the elements (no nested
 * arrays here). ne[0] is the innermost (fastest varying) dimension, so an
 * HF [out][in] matrix has ne = {in, out} and a stacked expert tensor
 * [E][out][in] has ne = {in, out, E}. Each tensor's offset is relative to
 * the data blob and a multiple of the alignment: "general.alignment"
 * (u32, a power of two) or 32. Its size is ne[0]/block · bytes-per-block ·
 * ne[1]·ne[2]·ne[3] for its type (F32 4, F16 2, BF16 2 bytes per weight;
 * block types in core/ggml_blocks.h).
 *
 * Reader: maps and validates the whole structure (every length and offset
 * inside the file, known value types, tensor sizes, data ranges inside the
 * file and non-overlapping), so accessors never read out of bounds.
 * Writer: collects metadata and tensor descriptions, then streams the
 * tensors' bytes through callbacks into a temporary file beside the
 * output, renamed into place only when complete.
 */
#ifndef MOEC_FORMATS_GGUF_H
#define MOEC_FORMATS_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef enum moec_gguf_type {
    MOEC_GGUF_U8 = 0,
    MOEC_GGUF_I8 = 1,
    MOEC_GGUF_U16 = 2,
    MOEC_GGUF_I16 = 3,
    MOEC_GGUF_U32 = 4,
    MOEC_GGUF_I32 = 5,
    MOEC_GGUF_F32 = 6,
    MOEC_GGUF_BOOL = 7,
    MOEC_GGUF_STRING = 8,
    MOEC_GGUF_ARRAY = 9,
    MOEC_GGUF_U64 = 10,
    MOEC_GGUF_I64 = 11,
    MOEC_GGUF_F64 = 12,
    MOEC_GGUF_TYPE_COUNT
} moec_gguf_type;

/* ggml type ids of the float storages (block types: core/ggml_blocks.h). */
#define MOEC_GGML_F32 0
#define MOEC_GGML_F16 1
#define MOEC_GGML_BF16 30

#define MOEC_GGUF_DEFAULT_ALIGNMENT 32

/* Bytes of a tensor of ggml type `type` and dims ne[n_dims]; 0 when the type
 * is not one moec knows (F32, F16, BF16, the block types), ne[0] is not a
 * multiple of its block size, or the size overflows. */
uint64_t moec_gguf_tensor_bytes(int type, int n_dims, const int64_t *ne);
/* "F32", "F16", "BF16", "Q4_K", ...; "?" for others. */
const char *moec_gguf_type_name(int type);

/* ---- reader --------------------------------------------------------------- */

typedef struct moec_gguf moec_gguf;

typedef struct moec_gguf_tensor {
    const char *name;    /* NUL-terminated copy */
    int n_dims;          /* 1..4 */
    int64_t ne[4];       /* ne[0] innermost; 1 past n_dims */
    int type;            /* ggml type id */
    uint64_t offset;     /* within the data blob */
    const void *data;    /* in the mapping */
    uint64_t nbytes;
} moec_gguf_tensor;

/* Opens and validates path (mmap'd read-only). Errors name the path and the
 * part: MOEC_ERR_IO, MOEC_ERR_FORMAT (bad magic, truncation, a length past
 * the end, an unknown value type, a tensor size or range that does not
 * fit), MOEC_ERR_UNSUPPORTED (a version other than 2 or 3, a tensor type moec
 * cannot size). Close with moec_gguf_close. */
moec_status moec_gguf_open(const char *path, moec_gguf **out, moec_err *err);
void moec_gguf_close(moec_gguf *g);

uint32_t moec_gguf_version(const moec_gguf *g);
size_t moec_gguf_alignment(const moec_gguf *g);
/* Offset of the data blob in the file. */
uint64_t moec_gguf_data_offset(const moec_gguf *g);

size_t moec_gguf_kv_count(const moec_gguf *g);
const char *moec_gguf_kv_key(const moec_gguf *g, size_t i);
moec_gguf_type moec_gguf_kv_type(const moec_gguf *g, size_t i);
/* Index of a key, or -1. */
int64_t moec_gguf_find_kv(const moec_gguf *g, const char *key);

/* Scalar values (the kv must have exactly that type; else false). */
bool moec_gguf_get_u32(const moec_gguf *g, const char *key, uint32_t *v);
bool moec_gguf_get_i32(const moec_gguf *g, const char *key, int32_t *v);
bool moec_gguf_get_u64(const moec_gguf *g, const char *key, uint64_t *v);
bool moec_gguf_get_f32(const moec_gguf *g, const char *key, float *v);
bool moec_gguf_get_bool(const moec_gguf *g, const char *key, bool *v);
/* A string value: pointer into the mapping (not NUL-terminated) and length. */
bool moec_gguf_get_str(const moec_gguf *g, const char *key, const char **s, size_t *len);
/* An array: element type and count. */
bool moec_gguf_get_arr(const moec_gguf *g, const char *key, moec_gguf_type *elem, uint64_t *count);
/* Element i of an array of fixed-size elements, copied into *out (as many
 * bytes as the element type has: 4 for i32/u32/f32, ...; metadata in the
 * file is not aligned, so no pointer to it is handed out); false when the
 * key is not such an array or i is past its end. Element i of a string
 * array: a pointer into the mapping and its length. */
bool moec_gguf_arr_get(const moec_gguf *g, const char *key, uint64_t i, void *out);
bool moec_gguf_arr_str(const moec_gguf *g, const char *key, uint64_t i, const char **s, size_t *len);

size_t moec_gguf_tensor_count(const moec_gguf *g);
const moec_gguf_tensor *moec_gguf_tensor_at(const moec_gguf *g, size_t i);
const moec_gguf_tensor *moec_gguf_find_tensor(const moec_gguf *g, const char *name);

/* ---- writer --------------------------------------------------------------- */

typedef struct moec_gguf_writer moec_gguf_writer;
typedef struct moec_gguf_out moec_gguf_out;

/* Appends bytes of the tensor being written. */
moec_status moec_gguf_out_write(moec_gguf_out *o, const void *data, size_t n, moec_err *err);

/* Produces one tensor's bytes, exactly its size, by moec_gguf_out_write
 * calls (any number). */
typedef moec_status (*moec_gguf_emit_fn)(void *ctx, moec_gguf_out *o, moec_err *err);

moec_status moec_gguf_writer_new(moec_gguf_writer **out, moec_err *err);
void moec_gguf_writer_free(moec_gguf_writer *w);

/* Metadata, in the order added (keys must be unique; strings are copied). */
moec_status moec_gguf_add_u32(moec_gguf_writer *w, const char *key, uint32_t v, moec_err *err);
moec_status moec_gguf_add_i32(moec_gguf_writer *w, const char *key, int32_t v, moec_err *err);
moec_status moec_gguf_add_f32(moec_gguf_writer *w, const char *key, float v, moec_err *err);
moec_status moec_gguf_add_bool(moec_gguf_writer *w, const char *key, bool v, moec_err *err);
moec_status moec_gguf_add_str(moec_gguf_writer *w, const char *key, const char *s, size_t len, moec_err *err);
/* Arrays of n fixed-size elements (i32, f32) or strings (lens[i] bytes each). */
moec_status moec_gguf_add_arr_i32(moec_gguf_writer *w, const char *key, const int32_t *v, uint64_t n,
                                  moec_err *err);
moec_status moec_gguf_add_arr_f32(moec_gguf_writer *w, const char *key, const float *v, uint64_t n,
                                  moec_err *err);
moec_status moec_gguf_add_arr_str(moec_gguf_writer *w, const char *key, const char *const *s, const size_t *lens,
                                  uint64_t n, moec_err *err);

/* A tensor (names unique, at most 63 bytes as llama.cpp requires): its
 * bytes come from emit(ctx, ...) at write time, in the order added. */
moec_status moec_gguf_add_tensor(moec_gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne,
                                 moec_gguf_emit_fn emit, void *ctx, moec_err *err);

/* Writes the file atomically: "<path>.tmp-PID-N" beside it, fsync, rename.
 * On failure nothing is left at path (nor the temporary file). */
moec_status moec_gguf_writer_write(moec_gguf_writer *w, const char *path, moec_err *err);

#endif
