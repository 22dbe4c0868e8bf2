/* moec-tokenize - encode stdin to token ids, or decode ids back to text,
 * with a model's tokenizer.json. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "tokenizer/tokenizer.h"

static const char usage[] =
    "Usage: moec-tokenize [OPTIONS] DIR\n"
    "Encode the text on standard input to token ids (printed space-separated on\n"
    "one line), or with --decode turn whitespace-separated ids back into text.\n"
    "No BOS/EOS or other template tokens are added.\n"
    "\n"
    "  DIR                 model directory holding tokenizer.json, or the path of\n"
    "                      a tokenizer .json file\n"
    "  -d, --decode        read ids on stdin and print the text they stand for\n"
    "  -s, --skip-special  with --decode, leave out special tokens (<|endoftext|>...)\n"
    "  -h, --help          show this help and exit\n";

static char *read_stdin(size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        cli_die("out of memory");
    for (;;) {
        size_t r = fread(buf + n, 1, cap - n, stdin);
        n += r;
        if (r == 0) {
            if (ferror(stdin))
                cli_die("stdin: %s", strerror(errno));
            break;
        }
        if (n == cap) {
            cap *= 2;
            char *b = realloc(buf, cap);
            if (!b)
                cli_die("out of memory");
            buf = b;
        }
    }
    *len = n;
    return buf;
}

static void encode(const moec_tokenizer *tok)
{
    size_t len, n;
    char *text = read_stdin(&len);
    int32_t *ids;
    moec_err err;
    if (moec_tokenizer_encode(tok, text, len, &ids, &n, &err))
        cli_die_err(&err);
    for (size_t i = 0; i < n; i++)
        printf(i ? " %d" : "%d", ids[i]);
    putchar('\n');
    free(ids);
    free(text);
}

static void decode(const moec_tokenizer *tok, int skip_special)
{
    size_t len, n = 0, cap = 1024;
    char *in = read_stdin(&len);
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids)
        cli_die("out of memory");
    const char *seps = " \t\r\n\v\f";
    char *save = NULL;
    /* read_stdin leaves no NUL: give strtok_r one (replacing nothing) */
    char *text = realloc(in, len + 1);
    if (!text)
        cli_die("out of memory");
    text[len] = '\0';
    if (strlen(text) != len)
        cli_die("stdin: expected token ids, found a NUL byte");
    for (char *w = strtok_r(text, seps, &save); w; w = strtok_r(NULL, seps, &save)) {
        char *end;
        errno = 0;
        long v = strtol(w, &end, 10);
        if (errno || *end || v < 0 || v > INT32_MAX)
            cli_die("stdin: '%.40s' is not a token id", w);
        if (n == cap) {
            cap *= 2;
            int32_t *b = realloc(ids, cap * sizeof *ids);
            if (!b)
                cli_die("out of memory");
            ids = b;
        }
        ids[n++] = (int32_t)v;
    }
    char *out;
    size_t out_len;
    moec_err err;
    if (moec_tokenizer_decode(tok, ids, n, skip_special, &out, &out_len, &err))
        cli_die_err(&err);
    fwrite(out, 1, out_len, stdout);
    free(out);
    free(ids);
    free(text);
}

int main(int argc, char **argv)
{
    cli_init(argc, argv);
    static const struct option opts[] = {
        { "decode", no_argument, NULL, 'd' },
        { "skip-special", no_argument, NULL, 's' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int do_decode = 0, skip_special = 0, c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "dsh", opts, NULL)) != -1) {
        switch (c) {
        case 'd': do_decode = 1; break;
        case 's': skip_special = 1; break;
        case 'h': fputs(usage, stdout); return CLI_EXIT_OK;
        default:
            if (optopt)
                cli_usage_error("unknown option '-%c'", optopt);
            cli_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        cli_usage_error("missing DIR (a model directory or a tokenizer .json file)");
    if (optind + 1 < argc)
        cli_usage_error("unexpected argument '%s'", argv[optind + 1]);
    if (skip_special && !do_decode)
        cli_usage_error("--skip-special only applies with --decode");

    const char *arg = argv[optind];
    char path[4096];
    struct stat sb;
    if (stat(arg, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        if ((size_t)snprintf(path, sizeof path, "%s/tokenizer.json", arg) >= sizeof path)
            cli_die("%s: path too long", arg);
    } else {
        snprintf(path, sizeof path, "%s", arg);
    }
    moec_tokenizer *tok;
    moec_err err;
    if (moec_tokenizer_load(&tok, path, &err))
        cli_die_err(&err);
    if (do_decode)
        decode(tok, skip_special);
    else
        encode(tok);
    moec_tokenizer_free(tok);
    if (fflush(stdout) != 0)
        cli_die("stdout: %s", strerror(errno));
    return CLI_EXIT_OK;
}
