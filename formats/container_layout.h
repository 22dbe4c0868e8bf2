/* container_layout.h - byte offsets of the .moec file structures, shared by
 * the reader and the writer (internal; docs/format.md is the specification).
 * All integers are little-endian and read/written byte by byte, so neither
 * the host's byte order nor the alignment of a pointer matters.
 */
#ifndef MOEC_FORMATS_CONTAINER_LAYOUT_H
#define MOEC_FORMATS_CONTAINER_LAYOUT_H

#include <stdint.h>

/* "MOEC", then CR LF SUB LF so that line-ending conversions and text-mode
 * transfers break the magic instead of the data. */
#define CT_MAGIC "MOEC\r\n\x1a\n"
#define CT_MAGIC_LEN 8
#define CT_ALIGN 64u

/* header: 64 bytes at offset 0 */
#define CT_HDR_SIZE 64u
#define CT_HDR_VERSION 8      /* u32 */
#define CT_HDR_FLAGS 12       /* u32, 0 */
#define CT_HDR_FILE_SIZE 16   /* u64 */
#define CT_HDR_DIR_OFFSET 24  /* u64 */
#define CT_HDR_DIR_SIZE 32    /* u64 */
#define CT_HDR_N_BLOBS 40     /* u32 */
#define CT_HDR_N_TENSORS 44   /* u32 */
#define CT_HDR_RESERVED 48    /* u64, 0 */
#define CT_HDR_CHECKSUM 56    /* u64: XXH3-64 of header[0,56) then the directory */

/* blob entry: 32 bytes + name padded to 8 */
#define CT_BLOB_CHECKSUM 0    /* u64: XXH3-64 of the blob's bytes */
#define CT_BLOB_NAME_LEN 8    /* u16 */
#define CT_BLOB_RESERVED 10   /* 6 bytes, 0 */
#define CT_BLOB_OFFSET 16     /* u64 */
#define CT_BLOB_SIZE 24       /* u64 */
#define CT_BLOB_FIXED 32u

/* tensor entry: 56 bytes + 32 per section + name padded to 8 */
#define CT_TEN_CHECKSUM 0     /* u64: XXH3-64 of entry[8,end) then the sections' stored bytes */
#define CT_TEN_NAME_LEN 8     /* u16 */
#define CT_TEN_STORAGE 10     /* u8 */
#define CT_TEN_NDIM 11        /* u8 */
#define CT_TEN_BITS 12        /* u8 */
#define CT_TEN_SYMMETRIC 13   /* u8 */
#define CT_TEN_N_SECTIONS 14  /* u8 */
#define CT_TEN_RESERVED1 15   /* u8, 0 */
#define CT_TEN_GROUP 16       /* u32 */
#define CT_TEN_RESERVED2 20   /* u32, 0 */
#define CT_TEN_SHAPE 24       /* u64[4] */
#define CT_TEN_FIXED 56u

/* section record: 32 bytes */
#define CT_SEC_KIND 0         /* u8 */
#define CT_SEC_ENCODING 1     /* u8 */
#define CT_SEC_RESERVED 2     /* u16, 0 */
#define CT_SEC_CHUNK_SIZE 4   /* u32 */
#define CT_SEC_OFFSET 8       /* u64 */
#define CT_SEC_STORED_SIZE 16 /* u64 */
#define CT_SEC_SIZE 24        /* u64 */
#define CT_SEC_RECORD 32u

#define CT_NAME_MAX 65535u

static inline uint64_t ct_ld(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static inline void ct_st(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

static inline uint64_t ct_pad8(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }

#endif
