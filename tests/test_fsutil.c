/* lib/core/fsutil.c: refusing outputs that are inputs, atomic directory
 * replacement, temporaries removed by the signal handler, and readers that
 * do not block on a FIFO. */
#include "testutil.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/fsutil.h"

static void write_text(const char *dir, const char *name, const char *text)
{
    char p[8400];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    tu_write_file(p, text, strlen(text));
}

static moec_status check(const char *out, const char *in)
{
    moec_err err = {0};
    return moec_check_output_not_input(out, in, &err);
}

static void test_output_not_input(void **state)
{
    (void)state;
    char d[4096], m[4200], m2[4200], p[8400], q[8400];
    snprintf(d, sizeof d, "%s", tu_tmpdir());
    snprintf(m, sizeof m, "%s/model", d);
    snprintf(m2, sizeof m2, "%s/model2", d);
    assert_int_equal(mkdir(m, 0777), 0);
    write_text(m, "config.json", "{}");

    assert_int_equal(check(m, m), MOEC_ERR_ARG);               /* the same path */
    snprintf(p, sizeof p, "%s/", m);
    assert_int_equal(check(p, m), MOEC_ERR_ARG);               /* a trailing slash */
    snprintf(p, sizeof p, "%s/../../%s/./model", m, strrchr(d, '/') + 1);
    assert_int_equal(check(p, m), MOEC_ERR_ARG);               /* another spelling */
    snprintf(p, sizeof p, "%s/link", d);
    assert_int_equal(symlink(m, p), 0);
    assert_int_equal(check(p, m), MOEC_ERR_ARG);               /* through a symlink */
    assert_int_equal(check(m, p), MOEC_ERR_ARG);
    snprintf(p, sizeof p, "%s/out", m);
    assert_int_equal(check(p, m), MOEC_ERR_ARG);               /* inside the input */
    assert_int_equal(check(d, m), MOEC_ERR_ARG);               /* holding the input */
    assert_int_equal(check(m2, m), MOEC_OK);                    /* a sibling sharing a prefix */
    assert_int_equal(check("/nonexistent-dir/x", m), MOEC_OK);  /* fails later, when written */

    /* files: a hard link is the same file under another name */
    snprintf(p, sizeof p, "%s/a.moec", d);
    snprintf(q, sizeof q, "%s/b.moec", d);
    tu_write_file(p, "x", 1);
    assert_int_equal(link(p, q), 0);
    assert_int_equal(check(q, p), MOEC_ERR_ARG);
    snprintf(q, sizeof q, "%s/c.moec", d);
    assert_int_equal(check(q, p), MOEC_OK);
    assert_int_equal(check(q, "/nonexistent-input"), MOEC_ERR_IO);
}

static void test_commit_dir_replaces_atomically(void **state)
{
    (void)state;
    moec_err err = {0};
    char d[4096], out[4200], tmp[4300];
    snprintf(d, sizeof d, "%s", tu_tmpdir());
    snprintf(out, sizeof out, "%s/out", d);
    assert_int_equal(mkdir(out, 0777), 0);
    write_text(out, "config.json", "old");
    write_text(out, "only-old", "x");
    assert_int_equal(moec_tmpdir_beside(out, tmp, sizeof tmp, false, &err), MOEC_ERR_IO); /* no overwrite */
    assert_int_equal(moec_tmpdir_beside(out, tmp, sizeof tmp, true, &err), MOEC_OK);
    write_text(tmp, "config.json", "new");
    assert_int_equal(moec_commit_dir(tmp, out, true, &err), MOEC_OK);
    char p[8400];
    snprintf(p, sizeof p, "%s/config.json", out);
    size_t n;
    char *text = tu_read_file(p, &n);
    assert_string_equal(text, "new");
    free(text);
    snprintf(p, sizeof p, "%s/only-old", out);
    assert_int_equal(access(p, F_OK), -1);
    assert_int_equal(tu_count_dir_entries(d), 1); /* no temporary or old copy beside it */

    /* an output that is a symlink to another model: the link is replaced,
     * the directory it named keeps its files */
    char other[4200], link_out[4200];
    snprintf(other, sizeof other, "%s/other", d);
    snprintf(link_out, sizeof link_out, "%s/link-out", d);
    assert_int_equal(mkdir(other, 0777), 0);
    write_text(other, "config.json", "other");
    assert_int_equal(symlink(other, link_out), 0);
    assert_int_equal(moec_tmpdir_beside(link_out, tmp, sizeof tmp, true, &err), MOEC_OK);
    write_text(tmp, "config.json", "new");
    assert_int_equal(moec_commit_dir(tmp, link_out, true, &err), MOEC_OK);
    struct stat lb;
    assert_int_equal(lstat(link_out, &lb), 0);
    assert_true(S_ISDIR(lb.st_mode));
    snprintf(p, sizeof p, "%s/config.json", other);
    text = tu_read_file(p, &n);
    assert_string_equal(text, "other");
    free(text);
}

/* A child that registers temporaries, then gets sig: it must die of sig
 * with every temporary gone and a renamed output kept. */
static void signal_cleanup(int sig)
{
    char d[4096], out[4200], file[4200];
    snprintf(d, sizeof d, "%s", tu_tmpdir());
    snprintf(out, sizeof out, "%s/model-out", d);
    snprintf(file, sizeof file, "%s/stats.bin", d);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        moec_err err = {0};
        char tmp[4300], t2[8400], done[8400];
        if (moec_cleanup_on_signals(&err) || moec_tmpdir_beside(out, tmp, sizeof tmp, false, &err))
            _exit(3);
        write_text(tmp, "config.json", "{}");
        write_text(tmp, ".model.safetensors.tmp.1.0", "part");
        snprintf(t2, sizeof t2, "%s.tmp-1-0", file);
        tu_write_file(t2, "part", 4);
        moec_tmp_track(t2);
        /* a temporary renamed into place is an output, not a temporary */
        snprintf(done, sizeof done, "%s/done.tmp-x", d);
        tu_write_file(done, "ok", 2);
        moec_tmp_track(done);
        snprintf(t2, sizeof t2, "%s/done", d);
        if (moec_tmp_rename(done, t2) != 0 || moec_write_file(file, "whole", 5, &err))
            _exit(4);
        raise(sig);
        _exit(5); /* not reached */
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), sig);
    /* left: the renamed output and the file written whole */
    assert_int_equal(tu_count_dir_entries(d), 2);
    char p[8400];
    snprintf(p, sizeof p, "%s/done", d);
    assert_int_equal(access(p, F_OK), 0);
    assert_int_equal(access(file, F_OK), 0);
}

static void test_sigint_removes_temporaries(void **state)
{
    (void)state;
    signal_cleanup(SIGINT);
}

static void test_sigterm_removes_temporaries(void **state)
{
    (void)state;
    signal_cleanup(SIGTERM);
}

static void test_read_file_refuses_fifo(void **state)
{
    (void)state;
    char p[8400];
    snprintf(p, sizeof p, "%s/fifo", tu_tmpdir());
    assert_int_equal(mkfifo(p, 0666), 0);
    moec_err err = {0};
    char *buf;
    size_t len;
    /* would block forever in open() if the reader waited for a writer */
    assert_int_equal(moec_read_file(p, 1 << 20, &buf, &len, &err), MOEC_ERR_IO);
    assert_non_null(strstr(err.msg, "not a regular file"));
    assert_int_equal(moec_read_file(tu_tmpdir(), 1 << 20, &buf, &len, &err), MOEC_ERR_IO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_output_not_input),
        cmocka_unit_test(test_commit_dir_replaces_atomically),
        cmocka_unit_test(test_sigint_removes_temporaries),
        cmocka_unit_test(test_sigterm_removes_temporaries),
        cmocka_unit_test(test_read_file_refuses_fifo),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
