/* bytelevel.c - GPT-2's byte-level alphabet: every byte is given a printable
 * character so that BPE can work on arbitrary bytes. Bytes that are
 * printable in Latin-1 ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) stand for
 * themselves; the other 68, in increasing order, take U+0100, U+0101, ...
 * (so the space 0x20 is U+0120 'Ġ' and the newline 0x0A is U+010A 'Ċ'). */
#include "tokenizer/tok_internal.h"

/* The non-printable bytes form three runs: 0x00..0x20 (33 bytes),
 * 0x7F..0xA0 (34 bytes) and 0xAD. */
static uint32_t byte_to_cp(uint8_t b)
{
    if (b <= 0x20)
        return 0x100 + b;
    if (b >= 0x7F && b <= 0xA0)
        return 0x100 + 33 + (uint32_t)(b - 0x7F);
    if (b == 0xAD)
        return 0x100 + 33 + 34;
    return b;
}

int tok_bytelevel_char(uint8_t b, char *out)
{
    return tok_utf8_put(out, byte_to_cp(b));
}

int tok_bytelevel_byte(uint32_t cp)
{
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp >= 0x100 && cp < 0x100 + 33)
        return (int)(cp - 0x100);
    if (cp >= 0x100 + 33 && cp < 0x100 + 67)
        return (int)(cp - 0x100 - 33 + 0x7F);
    if (cp == 0x100 + 67)
        return 0xAD;
    return -1;
}
