/* fsutil.h - file chores done one way everywhere: whole-file reads, atomic
 * writes (temporary name + rename), and directory outputs that appear only
 * when complete. */
#ifndef MOEC_CORE_FSUTIL_H
#define MOEC_CORE_FSUTIL_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

/* Reads a whole file into a malloc'd, NUL-terminated buffer (caller frees).
 * Files larger than max_bytes are refused as MOEC_ERR_FORMAT. */
moec_status moec_read_file(const char *path, size_t max_bytes, char **out, size_t *len, moec_err *err);

/* Writes bytes to path through "<path>.tmp-XXXXXX", fsync, rename. */
moec_status moec_write_file(const char *path, const void *data, size_t len, moec_err *err);

/* Copies a file (atomically, as moec_write_file). */
moec_status moec_copy_file(const char *src, const char *dst, moec_err *err);

/* Creates an empty directory "<out_dir>.tmp-XXXXXX" beside out_dir and puts
 * its path in tmp. Refuses when out_dir exists and cannot be replaced (see
 * moec_commit_dir), so that work is not done for nothing. */
moec_status moec_tmpdir_beside(const char *out_dir, char *tmp, size_t cap, bool overwrite, moec_err *err);

/* Moves a completed temporary directory to out_dir. An existing out_dir is
 * replaced only when overwrite is set and it is empty or looks like a model
 * directory (holds config.json): a typo in -o must never delete a home
 * directory. */
moec_status moec_commit_dir(const char *tmp, const char *out_dir, bool overwrite, moec_err *err);

/* Checks, before any long work, that path's parent directory exists and is
 * writable, so a tool fails at once rather than after hours of compute:
 * MOEC_ERR_IO naming path and the parent otherwise. */
moec_status moec_check_parent_writable(const char *path, moec_err *err);

/* Memory of a streamed checkpoint (lib/pipeline). moec_release_pages tells
 * the kernel that the whole pages inside [p, p + n) are not needed any
 * more (madvise MADV_DONTNEED): pages of a read-only file mapping leave the
 * process's resident set and are read from the file again if touched;
 * partial pages at either end are kept, so neighbouring data is never
 * affected. moec_drop_written writes [off, off + len) of an output file to
 * disk now and drops it from the page cache (sync_file_range, then
 * posix_fadvise DONTNEED), so finished output does not stay in memory.
 * Both are advice: failures are ignored. */
void moec_release_pages(const void *p, size_t n);
void moec_drop_written(int fd, long long off, long long len);

/* Removes a directory tree written by moec (best effort, no error). */
void moec_remove_tree(const char *path);

#endif
