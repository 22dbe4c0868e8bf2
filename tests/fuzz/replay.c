/* replay.c - runs a fuzz target over files, without libFuzzer: the ctest
 * of the ordinary (gcc, ASan + UBSan) build replays every seed and every
 * saved crash input (tests/fuzz/corpus/TARGET, tests/fuzz/regress/TARGET)
 * through the target, so an input that once crashed a parser keeps being
 * tried by CI even where clang is missing.
 *
 * usage: replay-TARGET FILE_OR_DIR... (directories: every file in them) */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/fsutil.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int run_file(const char *path)
{
    char *buf;
    size_t len;
    moec_err err;
    if (moec_read_file(path, (size_t)1 << 30, &buf, &len, &err) != MOEC_OK) {
        fprintf(stderr, "replay: %s\n", err.msg);
        return 1;
    }
    /* an exact-size copy, so ASan catches a read one byte past the input */
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, buf, len);
    free(buf);
    LLVMFuzzerTestOneInput(copy, len);
    free(copy);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    int files = 0, bad = 0;
    for (int i = 1; i < argc; i++) {
        struct stat sb;
        if (stat(argv[i], &sb) != 0)
            continue; /* no regression inputs for this target yet */
        if (!S_ISDIR(sb.st_mode)) {
            bad += run_file(argv[i]);
            files++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        if (!d)
            continue;
        char **names = NULL;
        size_t n = 0, cap = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 64;
                names = realloc(names, cap * sizeof *names);
            }
            size_t plen = strlen(argv[i]) + strlen(e->d_name) + 2;
            names[n] = malloc(plen);
            snprintf(names[n], plen, "%s/%s", argv[i], e->d_name);
            n++;
        }
        closedir(d);
        if (n)
            qsort(names, n, sizeof *names, cmp_str);
        for (size_t k = 0; k < n; k++) {
            bad += run_file(names[k]);
            files++;
            free(names[k]);
        }
        free(names);
    }
    printf("replayed %d inputs\n", files);
    return bad ? 1 : 0;
}
