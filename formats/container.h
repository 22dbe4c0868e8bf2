/* container.h - the .moec checkpoint container.
 *
 * A .moec file holds named blobs (config.json, tokenizer.json, a JSON report,
 * ...) and named tensors. A tensor has a storage type (F32, F16, BF16,
 * group-wise k-bit, or llama.cpp blocks), a shape, and one to four typed byte
 * sections (DATA for float storage and llama.cpp blocks; CODES, SCALES and,
 * when asymmetric, ZEROS for group-wise).
 * Each section is stored either raw, 64-byte aligned so it can be used
 * straight from the mapping, or zstd-compressed in independently decodable
 * chunks. Everything is covered by XXH3-64 checksums and zero padding, so a
 * single flipped byte anywhere in the file is detected at open.
 *
 * The container knows only bytes and their sizes: how codes, scales and zeros
 * are packed inside their sections is defined by core/qformat.h. The byte
 * layout of the file is specified in docs/format.md.
 *
 * Reader: moec_container_open() maps and validates a file; tensors' sections
 * are then read zero-copy (raw) or decoded into a buffer (zstd).
 * Writer: moec_container_writer_new(), add blobs and tensors, then
 * moec_container_writer_write(); the file appears under its name only once it
 * is complete and synced.
 */
#ifndef MOEC_FORMATS_CONTAINER_H
#define MOEC_FORMATS_CONTAINER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tensor.h"

/* The format version this code reads and writes; see docs/format.md for
 * the versioning policy. */
#define MOEC_CONTAINER_VERSION 2u

/* Stored values; never renumber. */
typedef enum moec_storage {
    MOEC_STORAGE_F32 = 0,
    MOEC_STORAGE_F16 = 1,
    MOEC_STORAGE_BF16 = 2,
    MOEC_STORAGE_GROUPWISE = 3, /* k-bit codes, F16 scale per group, optional k-bit zeros */
    MOEC_STORAGE_GGML = 4,      /* llama.cpp (ggml) blocks, verbatim; format version >= 2 */
    MOEC_STORAGE_COUNT
} moec_storage;

/* Stored values; never renumber. A tensor has each kind at most once. */
typedef enum moec_section_kind {
    MOEC_SECTION_DATA = 0,   /* float storage: the elements, little-endian, row-major */
    MOEC_SECTION_CODES = 1,  /* group-wise: packed k-bit codes */
    MOEC_SECTION_SCALES = 2, /* group-wise: one F16 scale per group */
    MOEC_SECTION_ZEROS = 3,  /* group-wise asymmetric: packed k-bit zero points */
    MOEC_SECTION_KIND_COUNT
} moec_section_kind;

typedef enum moec_encoding {
    MOEC_ENCODING_RAW = 0,  /* bytes as they are, 64-byte aligned in the file */
    MOEC_ENCODING_ZSTD = 1, /* chunk offset table + one zstd frame per chunk */
} moec_encoding;

/* Chunk sizes (decoded bytes per zstd chunk) a file may use. */
#define MOEC_CONTAINER_CHUNK_MIN 64u
#define MOEC_CONTAINER_CHUNK_MAX (1u << 30)

/* Storage type and shape of one tensor, as stored in its directory entry. */
typedef struct moec_ctensor_type {
    moec_storage storage;
    int bits;      /* GROUPWISE: 1..8; GGML: the ggml type id of the blocks (core/ggml_blocks.h:
                      2, 3, 6, 7, 8, 10..14); float storage: 0 */
    int group;     /* GROUPWISE: weights per group along the last dim, >= 1; else 0 */
    int symmetric; /* GROUPWISE: 1 = no zero points, 0 = packed zeros; else 0 */
    int ndim;      /* 1..MOEC_MAX_DIMS */
    int64_t shape[MOEC_MAX_DIMS]; /* each >= 1; entries past ndim are 0 */
} moec_ctensor_type;

/* ---- section sizes ------------------------------------------------------ */

/* The size rule for a group-wise matrix of rows x cols quantized along its
 * rows in groups of `group` columns (the last group of a row may be short):
 *   ngroups = ceil(cols / group)
 *   codes   = rows * ceil(cols * bits / 8)        (each row starts on a byte)
 *   scales  = rows * ngroups * 2                  (F16)
 *   zeros   = rows * ceil(ngroups * bits / 8)     (asymmetric; 0 if symmetric)
 * Fails with MOEC_ERR_ARG on bits outside 1..8, group < 1, rows or cols < 1,
 * or a size that overflows 2^63. Any output pointer may be NULL. */
moec_status moec_groupwise_section_bytes(int64_t rows, int64_t cols, int bits, int group,
                                         int symmetric, uint64_t *codes, uint64_t *scales,
                                         uint64_t *zeros, moec_err *err);

/* Validates a tensor type and gives the decoded size each section kind must
 * have (0: the kind is absent for this type). For an N-d tensor, rows is the
 * product of all dimensions but the last and cols is the last (rows = 1 for a
 * 1-d tensor). Float storage has only DATA = numel * element size. Fails with
 * MOEC_ERR_ARG naming the offending field. */
moec_status moec_ctensor_section_bytes(const moec_ctensor_type *t,
                                       uint64_t bytes[MOEC_SECTION_KIND_COUNT], moec_err *err);

/* "F32", "F16", "BF16", "GROUPWISE", "GGML"; "?" when out of range. */
const char *moec_storage_name(moec_storage s);
/* "DATA", "CODES", "SCALES", "ZEROS"; "?" when out of range. */
const char *moec_section_kind_name(moec_section_kind k);

/* ---- reader ------------------------------------------------------------- */

typedef struct moec_container moec_container;

typedef struct moec_csection_info {
    moec_section_kind kind;
    moec_encoding encoding;
    uint64_t size;        /* decoded bytes */
    uint64_t stored_size; /* bytes in the file: equal to size when RAW */
    uint64_t offset;      /* file offset of the stored bytes, a multiple of 64 */
    uint32_t chunk_size;  /* ZSTD: decoded bytes per chunk (last may be short); RAW: 0 */
} moec_csection_info;

typedef struct moec_ctensor_info {
    const char *name; /* NUL-terminated, owned by the container */
    moec_ctensor_type type;
    uint64_t checksum; /* the XXH3-64 stored in its directory entry */
    int n_sections;
    moec_csection_info sections[MOEC_SECTION_KIND_COUNT]; /* in increasing kind order */
} moec_ctensor_info;

/* Open flags. */
enum {
    /* Verify each tensor's checksum (and its chunk tables) on its first
     * section access instead of at open, so opening a file larger than RAM
     * does not read all of it. Header, directory, blobs and padding are
     * still verified at open. Until a tensor is accessed or verified, damage
     * in its bytes goes unnoticed. */
    MOEC_CONTAINER_LAZY_VERIFY = 1u << 0,
};

/* Maps `path` read-only and validates all of it: magic, version, sizes and
 * offsets within the file, no overlapping ranges, zero padding, section sizes
 * against each tensor's type, the header+directory checksum, blob checksums
 * and (unless MOEC_CONTAINER_LAZY_VERIFY) every tensor's checksum and chunk
 * tables. On success *out owns the mapping; free it with
 * moec_container_close(). On failure *out is NULL and err names the path and
 * the damaged part: "header", "directory", "blob 'NAME'", "tensor 'NAME'" or
 * the padding offset. Codes: MOEC_ERR_IO (cannot open, stat or map; not a
 * regular file), MOEC_ERR_UNSUPPORTED (a newer format version),
 * MOEC_ERR_FORMAT (anything damaged or malformed), MOEC_ERR_NOMEM. */
moec_status moec_container_open(const char *path, unsigned flags, moec_container **out,
                                moec_err *err);

/* Same on bytes in memory, which are not copied: they must stay unchanged
 * until moec_container_close(). `label` names the source in messages. */
moec_status moec_container_open_mem(const void *data, size_t size, const char *label,
                                    unsigned flags, moec_container **out, moec_err *err);

/* Unmaps and frees; pointers obtained from the container become invalid.
 * NULL is a no-op. */
void moec_container_close(moec_container *c);

/* Start of the file's bytes (the mapping) and its size. Raw section pointers
 * are this plus their offset. */
const void *moec_container_bytes(const moec_container *c, size_t *size);

/* As moec_st_release (safetensors.h): releases the whole pages of
 * [p, p + n) when the range lies in c's file mapping, returning whether it
 * does. Bytes of open_mem containers are never released. */
bool moec_container_release(const moec_container *c, const void *p, size_t n);

size_t moec_container_tensor_count(const moec_container *c);
/* Tensors in directory order; NULL when i is out of range. */
const moec_ctensor_info *moec_container_tensor(const moec_container *c, size_t i);
/* Index of the tensor named `name`, or -1. O(log n). */
int64_t moec_container_find(const moec_container *c, const char *name);

/* Verifies tensor i's checksum and chunk tables now (a no-op once done).
 * Only needed with MOEC_CONTAINER_LAZY_VERIFY; section access does it too.
 * Thread-safe. */
moec_status moec_container_verify_tensor(const moec_container *c, size_t i, moec_err *err);

/* Zero-copy access to a RAW section: *data points into the mapping (aligned
 * to 64 bytes from the file start) and stays valid until close. Fails with
 * MOEC_ERR_ARG if the tensor has no such section or it is ZSTD-encoded, and
 * with MOEC_ERR_FORMAT if lazy verification finds the tensor damaged. */
moec_status moec_container_section_ptr(const moec_container *c, size_t tensor,
                                       moec_section_kind kind, const void **data, size_t *size,
                                       moec_err *err);

/* Copies decoded bytes [offset, offset + len) of a section into dst (caller's
 * memory), decoding only the zstd chunks that overlap the range. Works for
 * both encodings. Thread-safe; concurrent calls may decode different ranges
 * of the same section. */
moec_status moec_container_section_read(const moec_container *c, size_t tensor,
                                        moec_section_kind kind, uint64_t offset, void *dst,
                                        size_t len, moec_err *err);

/* The whole decoded section: for RAW, *data points into the mapping and
 * *owned = NULL; for ZSTD, a buffer is malloc'd, decoded into, and returned
 * both as *data and *owned, which the caller frees with free(). */
moec_status moec_container_section_get(const moec_container *c, size_t tensor,
                                       moec_section_kind kind, const void **data, size_t *size,
                                       void **owned, moec_err *err);

/* A zero-copy moec_tensor view of an F32/F16/BF16 tensor whose DATA section
 * is RAW (dtype, shape, data into the mapping, nbytes; q = NULL). Fails with
 * MOEC_ERR_UNSUPPORTED for GROUPWISE storage (its sections are read
 * individually, see core/qformat.h) and MOEC_ERR_ARG when DATA is
 * ZSTD-encoded (use moec_container_section_get). */
moec_status moec_container_tensor_view(const moec_container *c, size_t tensor, moec_tensor *out,
                                       moec_err *err);

size_t moec_container_blob_count(const moec_container *c);
/* Blob names in directory order; NULL when out of range. */
const char *moec_container_blob_name(const moec_container *c, size_t i);
/* Zero-copy bytes of the blob named `name` (not NUL-terminated). Fails with
 * MOEC_ERR_FORMAT "no blob named ..." when absent. */
moec_status moec_container_blob(const moec_container *c, const char *name, const void **data,
                                size_t *size, moec_err *err);

/* ---- writer ------------------------------------------------------------- */

typedef struct moec_container_writer moec_container_writer;

typedef enum moec_compress {
    /* Float storage: RAW (mmap-able). Group-wise: each section is compressed
     * and kept compressed only if that saves at least min_saving. */
    MOEC_COMPRESS_AUTO = 0,
    MOEC_COMPRESS_NONE, /* every section RAW */
    MOEC_COMPRESS_ZSTD, /* every section ZSTD, even when it does not save */
} moec_compress;

typedef struct moec_container_writer_opts {
    int zstd_level;      /* default 3; tensors may override */
    uint32_t chunk_size; /* decoded bytes per zstd chunk; default 1 MiB */
    double min_saving;   /* AUTO keeps ZSTD if stored <= (1 - min_saving) * size; default 0.05 */
} moec_container_writer_opts;

void moec_container_writer_opts_default(moec_container_writer_opts *o);

/* One section handed to the writer: `data` is referenced, not copied. */
typedef struct moec_csection {
    moec_section_kind kind;
    const void *data;
    size_t size;
} moec_csection;

typedef struct moec_ctensor_desc {
    const char *name; /* copied */
    moec_ctensor_type type;
    int n_sections;
    moec_csection sections[MOEC_SECTION_KIND_COUNT]; /* any order */
    moec_compress compress;
    int zstd_level; /* 0: the writer's level */
} moec_ctensor_desc;

/* opts NULL means defaults. Free with moec_container_writer_free(). */
moec_status moec_container_writer_new(const moec_container_writer_opts *opts,
                                      moec_container_writer **out, moec_err *err);

/* Adds a blob. Its bytes are referenced until write (or free); names are
 * unique among blobs, 1..65535 bytes, without control characters (so are
 * tensor names). */
moec_status moec_container_writer_add_blob(moec_container_writer *w, const char *name,
                                           const void *data, size_t size, moec_err *err);

/* Adds a tensor after checking its type and that its sections are exactly
 * the kinds and sizes moec_ctensor_section_bytes() requires; the error names
 * the tensor. Section bytes are referenced until write, unless the writer is
 * streaming (below), in which case they are encoded and written before this
 * returns and may be freed right after. */
moec_status moec_container_writer_add_tensor(moec_container_writer *w,
                                             const moec_ctensor_desc *t, moec_err *err);

/* Optional: starts writing now, to a temporary file beside `path`, so that
 * tensors added from here on are written as they come instead of being held
 * until write (peak memory: one tensor). Tensors already added are written
 * immediately. moec_container_writer_write() must then be given the same
 * path (or NULL). */
moec_status moec_container_writer_stream(moec_container_writer *w, const char *path,
                                         moec_err *err);

/* Writes the container to a temporary file in the directory of `path`,
 * fsyncs it and renames it to `path` (then syncs the directory). On failure
 * the temporary file is removed and `path` is untouched. A writer writes
 * once; afterwards only free is allowed. */
moec_status moec_container_writer_write(moec_container_writer *w, const char *path,
                                        moec_err *err);

/* Frees the writer, removing an unfinished temporary file. NULL is a no-op. */
void moec_container_writer_free(moec_container_writer *w);

#endif
