/* moec-tokenize - encode stdin to token ids, or decode ids back to text,
 * with a model's tokenizer.json. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "tokenizer/tokenizer.h"

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

static void encode(const moec_tokenizer *tok, bool json)
{
    size_t len, n;
    char *text = read_stdin(&len);
    int32_t *ids;
    moec_err err;
    if (moec_tokenizer_encode(tok, text, len, &ids, &n, &err))
        cli_die_err(&err);
    if (json) {
        cJSON *o = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(o, "ids");
        for (size_t i = 0; a && i < n; i++)
            cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
        if (!a)
            cli_die("out of memory");
        cJSON_AddNumberToObject(o, "tokens", (double)n);
        cJSON_AddNumberToObject(o, "bytes", (double)len);
        cli_print_json(o);
        cJSON_Delete(o);
    } else {
        for (size_t i = 0; i < n; i++)
            printf(i ? " %d" : "%d", ids[i]);
        putchar('\n');
    }
    free(ids);
    free(text);
}

static void decode(const moec_tokenizer *tok, bool skip_special, bool json)
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
    if (json) {
        char *z = realloc(out, out_len + 1);
        if (!z)
            cli_die("out of memory");
        out = z;
        out[out_len] = '\0';
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "text", out);
        cJSON_AddNumberToObject(o, "tokens", (double)n);
        cli_print_json(o);
        cJSON_Delete(o);
    } else {
        fwrite(out, 1, out_len, stdout);
    }
    free(out);
    free(ids);
    free(text);
}

int main(int argc, char **argv)
{
    const char *arg = NULL;
    bool do_decode = false, skip_special = false, json = false;
    cli_opt opts[] = {
        {"decode", 'd', CLI_FLAG, NULL, &do_decode, .help = "read token ids on stdin and print the text they stand for"},
        {"skip-special", 's', CLI_FLAG, NULL, &skip_special,
         .help = "with --decode, leave out special tokens (<|endoftext|>...)"},
        CLI_OPT_JSON(&json),
        CLI_OPT_QUIET,
        CLI_OPT_END,
    };
    cli_tool tool = {
        .usage = "MODEL [--decode [--skip-special]] < INPUT",
        .summary = "Encodes the text on standard input to token ids (printed space-separated on one line), or "
                   "with --decode turns whitespace-separated ids back into text. No BOS/EOS or other template "
                   "tokens are added.",
        .operand = "MODEL",
        .operand_help = "model directory holding tokenizer.json, or the path of a tokenizer .json file",
        .operand_dest = &arg,
        .opts = opts,
    };
    cli_parse(&tool, argc, argv);
    if (skip_special && !do_decode)
        cli_usage_error("--skip-special only applies with --decode");

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
        decode(tok, skip_special, json);
    else
        encode(tok, json);
    moec_tokenizer_free(tok);
    if (fflush(stdout) != 0)
        cli_die("stdout: %s", strerror(errno));
    return CLI_EXIT_OK;
}
