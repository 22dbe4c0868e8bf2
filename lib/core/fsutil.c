#include "core/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

moec_status moec_open_regular(const char *path, int *fd_out, size_t *size, moec_err *err)
{
    *fd_out = -1;
    *size = 0;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; it changes
     * nothing for a regular file */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return moec_err_set(err, MOEC_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return moec_err_set(err, MOEC_ERR_IO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return moec_err_set(err, MOEC_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return moec_err_set(err, MOEC_ERR_IO, "%s: too large for this machine", path);
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    *fd_out = fd;
    *size = (size_t)sb.st_size;
    return MOEC_OK;
}

moec_status moec_read_file(const char *path, size_t max_bytes, char **out, size_t *len, moec_err *err)
{
    *out = NULL;
    *len = 0;
    int fd;
    size_t n;
    moec_status st = moec_open_regular(path, &fd, &n, err);
    if (st)
        return st;
    if (n > max_bytes || n == SIZE_MAX) {
        close(fd);
        return moec_err_set(err, MOEC_ERR_FORMAT, "%s: %zu bytes is larger than the %zu accepted", path, n,
                            max_bytes);
    }
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
    moec_tmp_track(tmp);
    moec_status st = write_all(fd, data, len, path, err);
    if (st == MOEC_OK && fsync(fd) != 0)
        st = moec_err_set(err, MOEC_ERR_IO, "%s: fsync: %s", path, strerror(errno));
    if (close(fd) != 0 && st == MOEC_OK)
        st = moec_err_set(err, MOEC_ERR_IO, "%s: close: %s", path, strerror(errno));
    if (st == MOEC_OK && fchmod_path_default(tmp) != 0)
        st = moec_err_set(err, MOEC_ERR_IO, "%s: chmod: %s", path, strerror(errno));
    if (st == MOEC_OK && moec_tmp_rename(tmp, path) != 0)
        st = moec_err_set(err, MOEC_ERR_IO, "%s: rename: %s", path, strerror(errno));
    if (st != MOEC_OK) {
        unlink(tmp);
        moec_tmp_untrack(tmp);
    }
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
    moec_tmp_track(tmp);
    mode_t mask = umask(0);
    umask(mask);
    chmod(tmp, 0777 & ~mask);
    return MOEC_OK;
}

/* Holds SIGINT, SIGTERM and SIGHUP off the calling thread (see
 * moec_tmp_rename). */
static void hold_signals(sigset_t *old)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, old);
}

static void release_signals(const sigset_t *old)
{
    pthread_sigmask(SIG_SETMASK, old, NULL);
}

static int tmp_set_committing(const char *path, int committing);

/* Swaps two existing paths atomically; -1 with errno EINVAL or ENOSYS where
 * the file system or kernel cannot. */
static int exchange_paths(const char *a, const char *b)
{
#ifdef RENAME_EXCHANGE
    return renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE);
#else
    (void)a;
    (void)b;
    errno = ENOSYS;
    return -1;
#endif
}

moec_status moec_commit_dir(const char *tmp, const char *out_dir, bool overwrite, moec_err *err)
{
    struct stat sb;
    if (lstat(out_dir, &sb) != 0) {
        if (moec_tmp_rename(tmp, out_dir) != 0) {
            int e = errno;
            moec_remove_tree(tmp);
            return moec_err_set(err, MOEC_ERR_IO, "%s: rename: %s", out_dir, strerror(e));
        }
        return MOEC_OK;
    }
    if (!overwrite || !replaceable(out_dir)) {
        moec_remove_tree(tmp);
        return moec_err_set(err, MOEC_ERR_IO, "%s: exists; refusing to replace it", out_dir);
    }
    /* one atomic swap: afterwards tmp names the old output, removed below
     * (or by the signal handler, which is what the commit wants anyway) */
    sigset_t old_mask;
    hold_signals(&old_mask);
    tmp_set_committing(tmp, 1);
    int r = exchange_paths(tmp, out_dir);
    int e = errno;
    tmp_set_committing(tmp, 0);
    release_signals(&old_mask);
    if (r == 0) {
        moec_remove_tree(tmp);
        return MOEC_OK;
    }
    if (e != EINVAL && e != ENOSYS && e != ENOTSUP) {
        moec_remove_tree(tmp);
        return moec_err_set(err, MOEC_ERR_IO, "%s: cannot replace it: %s", out_dir, strerror(e));
    }
    /* no exchange here: move the old output aside, then the new one in */
    char old[4200];
    snprintf(old, sizeof old, "%s.old-XXXXXX", tmp);
    if (!mkdtemp(old)) {
        e = errno;
        moec_remove_tree(tmp);
        return moec_err_set(err, MOEC_ERR_IO, "%s: cannot move the old output aside: %s", out_dir, strerror(e));
    }
    hold_signals(&old_mask);
    tmp_set_committing(tmp, 1);
    r = rename(out_dir, old);
    e = errno;
    if (r == 0 && rename(tmp, out_dir) != 0) {
        e = errno;
        rename(old, out_dir);
        r = -1;
    }
    tmp_set_committing(tmp, 0);
    if (r == 0)
        moec_tmp_untrack(tmp);
    moec_tmp_track(old);
    release_signals(&old_mask);
    moec_remove_tree(old);
    if (r != 0) {
        moec_remove_tree(tmp);
        return moec_err_set(err, MOEC_ERR_IO, "%s: cannot replace it: %s", out_dir, strerror(e));
    }
    return MOEC_OK;
}

void moec_remove_tree(const char *path)
{
    /* a symlink (an old -o that pointed elsewhere) goes, not what it names */
    struct stat lb;
    DIR *d = lstat(path, &lb) == 0 && S_ISDIR(lb.st_mode) ? opendir(path) : NULL;
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
    moec_tmp_untrack(path);
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

/* ---- refusing to write over an input ------------------------------------ */

/* The canonical form of a path that may not exist yet: its parent resolved
 * (symlinks, "..", ".") and its last component appended. */
static bool canonical_out(const char *path, char *out, size_t cap)
{
    char resolved[PATH_MAX];
    if (realpath(path, resolved)) {
        if (strlen(resolved) >= cap)
            return false;
        strcpy(out, resolved);
        return true;
    }
    char copy[PATH_MAX];
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    if (n == 0 || n >= sizeof copy)
        return false;
    memcpy(copy, path, n);
    copy[n] = '\0';
    char *slash = strrchr(copy, '/');
    const char *base = slash ? slash + 1 : copy;
    const char *parent = slash ? (slash == copy ? "/" : copy) : ".";
    if (slash)
        *slash = '\0';
    if (!strcmp(base, ".") || !strcmp(base, "..") || !realpath(parent, resolved))
        return false;
    int w = snprintf(out, cap, "%s%s%s", resolved, strcmp(resolved, "/") ? "/" : "", base);
    return w > 0 && (size_t)w < cap;
}

/* a is b or lies inside directory b (both canonical) */
static bool same_or_inside(const char *a, const char *b)
{
    size_t n = strlen(b);
    if (strncmp(a, b, n) != 0)
        return false;
    return a[n] == '\0' || a[n] == '/' || (n == 1 && b[0] == '/');
}

moec_status moec_check_output_not_input(const char *out, const char *input, moec_err *err)
{
    char in_c[PATH_MAX], out_c[PATH_MAX];
    struct stat si, so;
    if (stat(input, &si) != 0 || !realpath(input, in_c))
        return moec_err_set(err, MOEC_ERR_IO, "%s: %s", input, strerror(errno));
    if (stat(out, &so) == 0 && so.st_dev == si.st_dev && so.st_ino == si.st_ino)
        return moec_err_set(err, MOEC_ERR_ARG, "%s: the output is the input %s; write it elsewhere", out, input);
    if (!canonical_out(out, out_c, sizeof out_c))
        return MOEC_OK; /* unresolvable: writing it fails later with its own message */
    if (same_or_inside(out_c, in_c))
        return moec_err_set(err, MOEC_ERR_ARG, "%s: the output would be written inside the input %s; write it elsewhere",
                            out, input);
    if (same_or_inside(in_c, out_c))
        return moec_err_set(err, MOEC_ERR_ARG, "%s: replacing the output would remove the input %s inside it", out,
                            input);
    return MOEC_OK;
}

/* ---- temporaries removed on SIGINT, SIGTERM, SIGHUP ----------------------
 *
 * A fixed table, so the signal handler reads it without locks or
 * allocation. A slot goes FREE -> CLAIMED (path being written) -> LIVE, and
 * COMMITTING while the owner renames it with signals held off its thread;
 * a handler running on another thread waits for that rename to finish. */

enum { SLOT_FREE, SLOT_CLAIMED, SLOT_LIVE, SLOT_COMMITTING };
#define TMP_SLOTS 64

static struct {
    atomic_int state;
    char path[PATH_MAX];
} tmp_slots[TMP_SLOTS];

void moec_tmp_track(const char *path)
{
    if (strlen(path) >= PATH_MAX)
        return;
    for (int i = 0; i < TMP_SLOTS; i++) {
        int expect = SLOT_FREE;
        if (atomic_compare_exchange_strong(&tmp_slots[i].state, &expect, SLOT_CLAIMED)) {
            strcpy(tmp_slots[i].path, path);
            atomic_store_explicit(&tmp_slots[i].state, SLOT_LIVE, memory_order_release);
            return;
        }
    }
}

static int tmp_find(const char *path)
{
    for (int i = 0; i < TMP_SLOTS; i++) {
        int s = atomic_load_explicit(&tmp_slots[i].state, memory_order_acquire);
        if ((s == SLOT_LIVE || s == SLOT_COMMITTING) && strcmp(tmp_slots[i].path, path) == 0)
            return i;
    }
    return -1;
}

void moec_tmp_untrack(const char *path)
{
    int i = tmp_find(path);
    if (i >= 0)
        atomic_store_explicit(&tmp_slots[i].state, SLOT_FREE, memory_order_release);
}

static int tmp_set_committing(const char *path, int committing)
{
    int i = tmp_find(path);
    if (i >= 0)
        atomic_store_explicit(&tmp_slots[i].state, committing ? SLOT_COMMITTING : SLOT_LIVE,
                              memory_order_release);
    return i;
}

int moec_tmp_rename(const char *from, const char *to)
{
    sigset_t old;
    hold_signals(&old);
    int i = tmp_set_committing(from, 1);
    int r = rename(from, to);
    int e = errno;
    if (i >= 0)
        atomic_store_explicit(&tmp_slots[i].state, r == 0 ? SLOT_FREE : SLOT_LIVE, memory_order_release);
    release_signals(&old);
    errno = e;
    return r;
}

/* Everything below runs in the signal handler: system calls only. */

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Empties a directory of plain files (moec's outputs are flat) and removes
 * it; a plain file is unlinked. */
static void remove_in_handler(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        unlink(path);
        return;
    }
    char buf[4096] __attribute__((aligned(8)));
    for (int pass = 0; pass < 64; pass++) {
        int removed = 0;
        lseek(fd, 0, SEEK_SET);
        for (;;) {
            long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
            if (n <= 0)
                break;
            for (long off = 0; off < n;) {
                struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + off);
                off += d->d_reclen;
                const char *nm = d->d_name;
                if (nm[0] == '.' && (nm[1] == '\0' || (nm[1] == '.' && nm[2] == '\0')))
                    continue;
                if (unlinkat(fd, nm, 0) == 0 || unlinkat(fd, nm, AT_REMOVEDIR) == 0)
                    removed++;
            }
        }
        if (!removed)
            break;
    }
    close(fd);
    rmdir(path);
}

static atomic_int handling;

static void cleanup_handler(int sig)
{
    int expect = 0;
    if (atomic_compare_exchange_strong(&handling, &expect, 1)) {
        for (int i = 0; i < TMP_SLOTS; i++) {
            /* an owner renaming this one holds signals on its own thread, so
             * this is another thread: wait for the rename (microseconds) */
            for (int spin = 0; spin < 5000; spin++) {
                if (atomic_load_explicit(&tmp_slots[i].state, memory_order_acquire) != SLOT_COMMITTING)
                    break;
                struct timespec ms = {0, 1000000};
                nanosleep(&ms, NULL);
            }
            if (atomic_load_explicit(&tmp_slots[i].state, memory_order_acquire) == SLOT_LIVE)
                remove_in_handler(tmp_slots[i].path);
        }
    } else {
        /* another thread is cleaning up and will end the process */
        for (;;)
            pause();
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    raise(sig);
    _exit(128 + sig);
}

moec_status moec_cleanup_on_signals(moec_err *err)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) {
        struct sigaction sa, old;
        /* a signal ignored by whoever started us (nohup, a background job)
         * stays ignored */
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN)
            continue;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = cleanup_handler;
        sigemptyset(&sa.sa_mask);
        for (size_t j = 0; j < sizeof sigs / sizeof *sigs; j++)
            sigaddset(&sa.sa_mask, sigs[j]);
        if (sigaction(sigs[i], &sa, NULL) != 0)
            return moec_err_set(err, MOEC_ERR_INTERNAL, "cannot install a handler for signal %d: %s", sigs[i],
                                strerror(errno));
    }
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
