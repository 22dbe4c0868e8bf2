/* fsutil.h - file chores done one way everywhere: whole-file reads, atomic
 * writes (temporary name + rename), directory outputs that appear only when
 * complete, temporaries removed when the process is interrupted, and the
 * refusal to write an output over an input. */
#ifndef MOEC_CORE_FSUTIL_H
#define MOEC_CORE_FSUTIL_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

/* Reads a whole file into a malloc'd, NUL-terminated buffer (caller frees).
 * Files larger than max_bytes are refused as MOEC_ERR_FORMAT; anything but a
 * regular file (a directory, a FIFO, a device) as MOEC_ERR_IO, without
 * blocking on it. */
moec_status moec_read_file(const char *path, size_t max_bytes, char **out, size_t *len, moec_err *err);

/* Writes bytes to path through "<path>.tmp-XXXXXX", fsync, rename. */
moec_status moec_write_file(const char *path, const void *data, size_t len, moec_err *err);

/* Copies a file (atomically, as moec_write_file). */
moec_status moec_copy_file(const char *src, const char *dst, moec_err *err);

/* Opens path read-only for a reader that wants a regular file: a FIFO or a
 * device never blocks the open, and anything but a regular file fails with
 * MOEC_ERR_IO naming path. On success *fd is open and *size holds the file
 * size. */
moec_status moec_open_regular(const char *path, int *fd, size_t *size, moec_err *err);

/* Creates an empty directory "<out_dir>.tmp-XXXXXX" beside out_dir and puts
 * its path in tmp (tracked as a temporary, see below). Refuses when out_dir exists and cannot be replaced (see
 * moec_commit_dir), so that work is not done for nothing. */
moec_status moec_tmpdir_beside(const char *out_dir, char *tmp, size_t cap, bool overwrite, moec_err *err);

/* Moves a completed temporary directory to out_dir. An existing out_dir is
 * replaced only when overwrite is set and it is empty or looks like a model
 * directory (holds config.json): a typo in -o must never delete a home
 * directory. The replacement is one atomic exchange where the file system
 * offers it (renameat2 RENAME_EXCHANGE), so out_dir names the old or the new
 * directory at every moment, never nothing and never a mixture. */
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

/* Removes a directory tree written by moec (best effort, no error); also
 * stops tracking path as a temporary. */
void moec_remove_tree(const char *path);

/* Refuses to write `out` when that would replace or damage `input`: out
 * names the same file or directory (also through symlinks, hard links or
 * another spelling of the path), lies inside the input directory, or holds
 * the input (replacing a directory replaces what is inside). An out that
 * does not exist yet is placed through its parent directory. input must
 * exist. MOEC_ERR_ARG naming both; MOEC_ERR_IO when input cannot be
 * resolved. */
moec_status moec_check_output_not_input(const char *out, const char *input, moec_err *err);

/* ---- temporaries removed when the process is interrupted ----------------
 *
 * Outputs are written under a temporary name and renamed when complete, so a
 * killed process leaves the old output or none, never a partial one. What a
 * SIGKILL leaves behind is only the temporary; on SIGINT, SIGTERM or SIGHUP
 * the handler of moec_cleanup_on_signals removes it too. The functions above
 * track their own temporaries; a writer that creates its own tracks it right
 * after creating it and renames it with moec_tmp_rename. At most 64
 * temporaries are tracked at once; one more is left untracked (it is then
 * not removed on a signal, nothing worse). */

/* Tracks a temporary file, or a temporary directory holding plain files. */
void moec_tmp_track(const char *path);
/* Stops tracking path (after it was removed, or handed on). */
void moec_tmp_untrack(const char *path);
/* rename(2) of a tracked temporary: signals are held off for the call, so
 * the handler never removes what has just become `to`; `from` is untracked
 * when the rename succeeds. Returns rename's result (errno set). */
int moec_tmp_rename(const char *from, const char *to);

/* Installs handlers for SIGINT, SIGTERM and SIGHUP that remove every tracked
 * temporary and then end the process by the same signal (so a shell sees
 * the interruption). Tools call it once at start. */
moec_status moec_cleanup_on_signals(moec_err *err);

#endif
