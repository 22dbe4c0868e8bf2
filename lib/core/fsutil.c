#include "core/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

moec_status moec_read_file(const char *path, size_t max_bytes, char **out, size_t *len, moec_err *err)
{
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return moec_err_set(err, MOEC_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return moec_err_set(err, MOEC_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > max_bytes) {
        close(fd);
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: %lld bytes is larger than the %zu accepted", path,
                            (long long)sb.st_size, max_bytes);
    }
    size_t n = (size_t)sb.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return moec_err_set(err, MOEC_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return moec_err_set(err, MOEC_ERR_IO, "%s: %s", path, r < 0 ? strerror(e) : "file shrank while read");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return MOEC_OK;
}

/* mkstemp creates 0600 files; outputs should get the usual 0666 & ~umask. */
static int fchmod_path_default(const char *path)
{
    mode_t mask = umask(0);
    umask(mask);
    return chmod(path, 0666 & ~mask);
}

static moec_status write_all(int fd, const void *data, size_t len, const char *path, moec_err *err)
{
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return moec_err_set(err, MOEC_ERR_IO, "%s: %s", path, strerror(errno));
        p += w;
        len -= (size_t)w;
    }
    return MOEC_OK;
}

moec_status moec_write_file(const char *path, const void *data, size_t len, moec_err *err)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path) >= sizeof tmp)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: path too long", path);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return moec_err_set(err, MOEC_ERR_IO, "%s: cannot create a temporary file: %s", path, strerror(errno));
    moec_status st = write_all(fd, data, len, path, err);
    if (st == MOEC_OK && fsync(fd) != 0)
        st = moec_err_set(err, MOEC_ERR_IO, "%s: fsync: %s", path, strerror(errno));
    if (close(fd) != 0 && st == MOEC_OK)
        st = moec_err_set(err, MOEC_ERR_IO, "%s: close: %s", path, strerror(errno));
    if (st == MOEC_OK && fchmod_path_default(tmp) != 0)
        st = moec_err_set(err, MOEC_ERR_IO, "%s: chmod: %s", path, strerror(errno));
    if (st == MOEC_OK && rename(tmp, path) != 0)
        st = moec_err_set(err, MOEC_ERR_IO, "%s: rename: %s", path, strerror(errno));
    if (st != MOEC_OK)
        unlink(tmp);
    return st;
}

moec_status moec_copy_file(const char *src, const char *dst, moec_err *err)
{
    char *buf;
    size_t len;
    moec_status st = moec_read_file(src, (size_t)1 << 32, &buf, &len, err);
    if (st)
        return st;
    st = moec_write_file(dst, buf, len, err);
    free(buf);
    return st;
}

/* An existing output may be replaced: empty, or a model directory / file. */
static bool replaceable(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return true;
    if (!S_ISDIR(sb.st_mode))
        return false;
    char cfg[4200];
    snprintf(cfg, sizeof cfg, "%s/config.json", path);
    if (access(cfg, F_OK) == 0)
        return true;
    DIR *d = opendir(path);
    if (!d)
        return false;
    struct dirent *e;
    bool empty = true;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            empty = false;
    closedir(d);
    return empty;
}

moec_status moec_tmpdir_beside(const char *out_dir, char *tmp, size_t cap, bool overwrite, moec_err *err)
{
    if (access(out_dir, F_OK) == 0) {
        if (!overwrite)
            return moec_err_set(err, MOEC_ERR_IO, "%s: already exists", out_dir);
        if (!replaceable(out_dir))
            return moec_err_set(err, MOEC_ERR_IO,
                                "%s: exists and is not a model directory; refusing to replace it", out_dir);
    }
    size_t n = strlen(out_dir);
    while (n > 1 && out_dir[n - 1] == '/')
        n--;
    if ((size_t)snprintf(tmp, cap, "%.*s.tmp-XXXXXX", (int)n, out_dir) >= cap)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: path too long", out_dir);
    if (!mkdtemp(tmp))
        return moec_err_set(err, MOEC_ERR_IO, "%s: cannot create a temporary directory beside it: %s", out_dir,
                            strerror(errno));
    mode_t mask = umask(0);
    umask(mask);
    chmod(tmp, 0777 & ~mask);
    return MOEC_OK;
}

moec_status moec_commit_dir(const char *tmp, const char *out_dir, bool overwrite, moec_err *err)
{
    char old[4200] = "";
    if (access(out_dir, F_OK) == 0) {
        if (!overwrite || !replaceable(out_dir)) {
            moec_remove_tree(tmp);
            return moec_err_set(err, MOEC_ERR_IO, "%s: exists; refusing to replace it", out_dir);
        }
        snprintf(old, sizeof old, "%s.old-XXXXXX", tmp);
        if (!mkdtemp(old) || rename(out_dir, old) != 0) {
            moec_remove_tree(tmp);
            return moec_err_set(err, MOEC_ERR_IO, "%s: cannot move the old output aside: %s", out_dir,
                                strerror(errno));
        }
    }
    if (rename(tmp, out_dir) != 0) {
        int e = errno;
        if (old[0])
            rename(old, out_dir);
        moec_remove_tree(tmp);
        return moec_err_set(err, MOEC_ERR_IO, "%s: rename: %s", out_dir, strerror(e));
    }
    if (old[0])
        moec_remove_tree(old);
    return MOEC_OK;
}

void moec_remove_tree(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char sub[4200];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            struct stat sb;
            if (lstat(sub, &sb) == 0 && S_ISDIR(sb.st_mode))
                moec_remove_tree(sub);
            else
                unlink(sub);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

moec_status moec_check_parent_writable(const char *path, moec_err *err)
{
    char parent[4096];
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    while (n > 0 && path[n - 1] != '/')
        n--;
    while (n > 1 && path[n - 1] == '/')
        n--;
    if (n >= sizeof parent)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: path too long", path);
    if (n == 0)
        strcpy(parent, ".");
    else
        memcpy(parent, path, n), parent[n] = '\0';
    struct stat sb;
    if (stat(parent, &sb) != 0 || !S_ISDIR(sb.st_mode) || access(parent, W_OK | X_OK) != 0)
        return moec_err_set(err, MOEC_ERR_IO, "%s: cannot write in %s", path, parent);
    return MOEC_OK;
}

void moec_release_pages(const void *p, size_t n)
{
    static size_t page;
    if (!page) {
        long ps = sysconf(_SC_PAGESIZE);
        page = ps > 0 ? (size_t)ps : 4096;
    }
    if (!p || n < page)
        return;
    uintptr_t a = ((uintptr_t)p + page - 1) / page * page, b = ((uintptr_t)p + n) / page * page;
    if (b > a)
        madvise((void *)a, b - a, MADV_DONTNEED);
}

void moec_drop_written(int fd, long long off, long long len)
{
    if (fd < 0 || len <= 0)
        return;
    sync_file_range(fd, (off_t)off, (off_t)len,
                    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
    posix_fadvise(fd, (off_t)off, (off_t)len, POSIX_FADV_DONTNEED);
}
