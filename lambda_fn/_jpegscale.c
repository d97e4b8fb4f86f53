/*
 * Baseline JPEG decoding at 1/8 scale, with the entropy decoding split across threads.
 *
 * At 1/8 scale libjpeg(-turbo) keeps only each luma block's DC coefficient (a 1x1 inverse DCT) and, for
 * 4:2:0 chroma, the 2x2 reduced inverse DCT of jidctred.c; what costs time is the Huffman decoding of every
 * coefficient, which libjpeg does on one core. Here that decoding runs on several threads:
 *
 *   - The entropy-coded data is first copied without its stuffed zero bytes (0xFF00 -> 0xFF).
 *   - Thread t starts at bit t*N/T, at a guessed state (first block of an MCU). Huffman codes
 *     resynchronise: after a few blocks a decoder started at a wrong bit is usually at a true block start.
 *   - Each thread records every block start it passes: (bit position, block index within the MCU), a
 *     running sum of its DC differences and the coefficients kept. Decoding from a (bit position, block index) state is
 *     deterministic, so once thread t-1, decoding on from the end of its own part, reaches a state that
 *     thread t recorded, everything thread t recorded from there on is what a serial decoder produces.
 *   - The parts are stitched at those meeting points (each part's DC sums offset by what came before),
 *     and each thread computes its part's pixels, then a band of the RGB conversion, with libjpeg-turbo's
 *     own integer arithmetic, so the output equals libjpeg-turbo's 1/8-scale output byte for byte.
 *
 * If no thread ever meets the next one, thread 0 simply decodes everything (correct, only not faster).
 * Anything this code does not handle (restart markers, progressive or arithmetic coding, 4:2:2 or other
 * sampling, more than 3 components, corrupt data) returns an error and the caller uses Pillow instead.
 * All reads go through a buffer padded with zero bytes (PAD_BYTES) and every index is bounded by the frame
 * size.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LUT_BITS 11
#define MAX_THREADS 16
#define MAX_BLOCKS_PER_MCU 10
#define FAST_NO_VALUE 0x1000
#define KEPT 25 /* coefficients the 2x2 reduced IDCT reads: rows and columns 0, 1, 3, 5, 7 */
/* Zero bytes after the scan data. A block that starts before the end of the data may read on past it: at
   most 64 symbols of at most 31 bits (248 bytes), plus the 8 bytes each refill loads. */
#define PAD_BYTES 512

enum {
    JS_OK = 0,
    JS_UNSUPPORTED = -1, /* a valid file this decoder does not handle */
    JS_CORRUPT = -2,     /* the data does not decode: let the full decoder report it */
    JS_NOMEM = -3,
};

typedef struct {
    uint16_t lut[1 << LUT_BITS]; /* (length << 8) | symbol for codes up to LUT_BITS long; 0: longer */
    int32_t maxcode[18];         /* largest code of each length, -1 if none */
    int32_t valoffset[17];       /* symbol index of a code of that length = code + valoffset */
    int32_t fast[1 << LUT_BITS]; /* code and its extra bits both within LUT_BITS: see build_huff; 0: no */
    uint8_t vals[256];
} huff_t;

enum { RESYNC = 1, BAD_CODE = 2, HAS_AC = 4 };

typedef struct {
    uint32_t bitpos;
    uint8_t blk;   /* block index within its MCU */
    uint8_t flags; /* RESYNC: follows an invalid code, so a guess; BAD_CODE: holds one (or runs past the data);
                      HAS_AC: kept AC != 0 */
    uint16_t cum;  /* running sum of this part's DC differences for the block's component, this one included,
                      modulo 2^16: libjpeg stores the DC value as a 16-bit JCOEF, so that is all it keeps */
} rec_t;          /* 8 bytes: the kept coefficients of HAS_AC blocks follow in order in the job's kept array */

typedef struct ctx ctx_t;

typedef struct {
    ctx_t *c;
    int id;
    size_t end_bit;
    rec_t *rec;
    size_t nrec, nrec1; /* records in all, and those phase 1 wrote (the only ones other parts read) */
    int16_t *kept;
    size_t nkept;
    int status;
    /* decoder state */
    const uint8_t *p;
    uint64_t acc;
    int n, blk, resync;
    uint16_t cum[3];
    /* phase 2: the part and record this decoder met, or -1 if it decoded to the end */
    int met_job;
    size_t met_rec;
    /* the records of this part that the stitched stream uses: [first, end), the first being block g0 */
    int used;
    size_t first, end, g0;
    uint16_t base[3]; /* DC value (modulo 2^16) of each component before block g0 */
} job_t;

struct ctx {
    const uint8_t *data; /* un-stuffed entropy-coded data, followed by PAD_BYTES zero bytes */
    size_t bits;
    int blocks_per_mcu, lw, lh, keep_chroma;
    int blk_comp[MAX_BLOCKS_PER_MCU];
    int blk_keep[MAX_BLOCKS_PER_MCU];
    int blk_x[MAX_BLOCKS_PER_MCU], blk_y[MAX_BLOCKS_PER_MCU]; /* a luma block's place within its MCU */
    const huff_t *dc[MAX_BLOCKS_PER_MCU];
    const huff_t *ac[MAX_BLOCKS_PER_MCU];
    size_t rec_cap, kept_cap, total, mcux, mcuy;
    const uint16_t *quant;
    int ow, oh;
    size_t cw; /* chroma plane row length */
    uint8_t *yplane, *cplane[2], *out;
    int ncomp, threads, status;
    job_t jobs[MAX_THREADS];
    pthread_barrier_t barrier;
    pthread_mutex_t gate_lock;
    pthread_cond_t gate_cond;
    int gate; /* 0: wait, 1: go, -1: abandon */
};

/* Zig-zag position -> natural position, padded as libjpeg pads it for corrupt runs past the end. */
static const uint8_t natural_order[64 + 16] = {
    0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,  12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13,
    6,  7,  14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31,
    39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63};

/* Natural position -> slot among the KEPT coefficients, or -1. */
static int8_t kept_slot[64];
static const int kept_rc[5] = {0, 1, 3, 5, 7};
static uint8_t range_limit[1024]; /* libjpeg's post-IDCT table, indexed by (x & 1023) for output x + 128 */

static void init_tables(void) {
    memset(kept_slot, -1, sizeof kept_slot);
    for (int r = 0; r < 5; r++)
        for (int c = 0; c < 5; c++) kept_slot[kept_rc[r] * 8 + kept_rc[c]] = (int8_t)(r * 5 + c);
    for (int i = 0; i < 1024; i++) {
        int v = (i < 512 ? i : i - 1024) + 128;
        range_limit[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
}

static inline int extend(uint32_t v, int size) {
    return v < (1u << (size - 1)) ? (int)v - (1 << size) + 1 : (int)v;
}

static int build_huff(huff_t *h, const uint8_t counts[16], const uint8_t *vals, int is_dc) {
    int code = 0, k = 0;
    memset(h, 0, sizeof *h);
    for (int len = 1; len <= 16; len++) {
        h->valoffset[len] = k - code;
        for (int i = 0; i < counts[len - 1]; i++) {
            /* libjpeg rejects a table whose codes overflow their length or use the all-ones code; checked
               before the code's table entries are written, which an over-full table would put out of range */
            if (k >= 256 || code >= (1 << len) - 1) return JS_UNSUPPORTED;
            h->vals[k] = vals[k];
            if (is_dc && vals[k] > 15) return JS_UNSUPPORTED;
            if (len <= LUT_BITS) {
                int shift = LUT_BITS - len;
                for (int j = 0; j < (1 << shift); j++) h->lut[(code << shift) | j] = (uint16_t)((len << 8) | vals[k]);
                /* fast[]: for a symbol whose extra bits also fit in the lookahead, the whole step at once:
                   bits 0-4 total length, 8-11 run (AC), FAST_NO_VALUE (AC end-of-block or 16 zeros), 16-31
                   the value. */
                int size = is_dc ? vals[k] : vals[k] & 15, run = is_dc ? 0 : vals[k] >> 4;
                if (len + size <= LUT_BITS) {
                    for (int j = 0; j < (1 << shift); j++) {
                        int value = size ? extend((uint32_t)(j >> (shift - size)), size) : 0;
                        int none = !is_dc && size == 0;
                        h->fast[(code << shift) | j] =
                            (int32_t)((uint32_t)value << 16) | (none ? FAST_NO_VALUE : 0) | (run << 8) | (len + size);
                    }
                }
            }
            k++;
            code++;
        }
        h->maxcode[len] = counts[len - 1] ? code - 1 : -1;
        if (code > (1 << len)) return JS_UNSUPPORTED; /* over-subscribed: not a prefix code */
        code <<= 1;
    }
    h->maxcode[17] = INT32_MAX;
    return JS_OK;
}

static inline uint64_t load_be64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return __builtin_bswap64(v);
}

/* Keep at least 56 bits in the MSB-aligned accumulator; reads whole bytes only. */
#define REFILL()                          \
    do {                                  \
        acc |= load_be64(p) >> n;         \
        p += (63 - n) >> 3;               \
        n |= 56;                          \
    } while (0)
#define BITPOS() ((size_t)(p - c->data) * 8 - (size_t)n)

/* Decode one symbol; returns -1 for a bit pattern that is no code of the table. */
static inline int decode_symbol(const huff_t *h, uint64_t *acc, int *n) {
    uint32_t e = h->lut[*acc >> (64 - LUT_BITS)];
    if (e) {
        int len = (int)(e >> 8);
        *acc <<= len;
        *n -= len;
        return (int)(e & 0xff);
    }
    for (int len = LUT_BITS + 1; len <= 16; len++) {
        int32_t code = (int32_t)(*acc >> (64 - len));
        if (code <= h->maxcode[len]) {
            *acc <<= len;
            *n -= len;
            return h->vals[code + h->valoffset[len]];
        }
    }
    return -1;
}

enum { AC_VALUE, AC_END_OF_BLOCK, AC_SIXTEEN_ZEROS, AC_BAD_CODE };

/* One AC step: a coefficient (run of zeros, then value), end of block, or sixteen zeros. */
static inline int ac_symbol(const huff_t *ac, uint64_t *acc, int *n, int *run_length, int *value) {
    int32_t f = ac->fast[*acc >> (64 - LUT_BITS)];
    if (__builtin_expect(f != 0, 1)) {
        *acc <<= f & 31;
        *n -= f & 31;
        *run_length = (f >> 8) & 15;
        if (f & FAST_NO_VALUE) return *run_length == 15 ? AC_SIXTEEN_ZEROS : AC_END_OF_BLOCK;
        *value = f >> 16;
        return AC_VALUE;
    }
    int rs = decode_symbol(ac, acc, n);
    if (rs < 0) return AC_BAD_CODE;
    *run_length = rs >> 4;
    int size = rs & 15;
    if (!size) return *run_length == 15 ? AC_SIXTEEN_ZEROS : AC_END_OF_BLOCK;
    *value = extend((uint32_t)(*acc >> (64 - size)), size);
    *acc <<= size;
    *n -= size;
    return AC_VALUE;
}

/*
 * Decode blocks from the job's current state. Phase 1 (first_other < 0) stops at the first block that starts
 * at or after the job's end_bit. Phase 2 compares every block start with the phase-1 records of the later
 * jobs and stops at the first one it meets.
 */
static void run(job_t *j, int first_other) {
    ctx_t *c = j->c;
    const uint8_t *p = j->p;
    uint64_t acc = j->acc;
    int n = j->n, blk = j->blk, resync = j->resync;
    int target = first_other;
    size_t cursor = 0, end_bit = first_other < 0 ? j->end_bit : SIZE_MAX;
    for (;;) {
        size_t pos = BITPOS();
        if (pos >= end_bit || pos >= c->bits) break;
        if (j->id == 0 && j->nrec >= c->total) break; /* part 0 counts true blocks: the frame is complete */
        if (first_other >= 0) {
            while (target < c->threads) {
                const job_t *o = &c->jobs[target];
                while (cursor < o->nrec1 && o->rec[cursor].bitpos < pos) cursor++;
                if (cursor < o->nrec1) break;
                target++; /* passed all of that part's records without meeting them: try the next part */
                cursor = 0;
            }
            if (target >= c->threads) {
                first_other = -1; /* nothing left to meet: decode to the end */
            } else {
                const rec_t *r = &c->jobs[target].rec[cursor];
                if (r->bitpos == pos && r->blk == blk) {
                    j->met_job = target;
                    j->met_rec = cursor;
                    break;
                }
            }
        }
        if (j->nrec >= c->rec_cap) {
            j->status = JS_CORRUPT; /* more blocks than the frame has: not a stream this frame describes */
            break;
        }
        rec_t *r = &j->rec[j->nrec++];
        r->bitpos = (uint32_t)pos;
        r->blk = (uint8_t)blk;
        r->flags = resync ? RESYNC : 0;
        resync = 0;
        int keep = c->blk_keep[blk];
        int16_t *coef = NULL; /* taken from the kept array at the first non-zero kept coefficient */
        REFILL();
        int comp = c->blk_comp[blk];
        const huff_t *dct = c->dc[blk];
        int32_t f = dct->fast[acc >> (64 - LUT_BITS)];
        if (f) {
            acc <<= f & 31;
            n -= f & 31;
            j->cum[comp] += (uint16_t)(f >> 16);
        } else {
            int size = decode_symbol(dct, &acc, &n);
            if (size < 0) goto bad_code;
            if (size) {
                j->cum[comp] += (uint16_t)extend((uint32_t)(acc >> (64 - size)), size);
                acc <<= size;
                n -= size;
            }
        }
        r->cum = j->cum[comp];
        const huff_t *ac = c->ac[blk];
        int run_length, value, kind;
        if (!keep) { /* luma at 1/8 scale (and 4:4:4 chroma): the AC coefficients are only skipped */
            for (int k = 1; k < 64; k++) {
                REFILL();
                kind = ac_symbol(ac, &acc, &n, &run_length, &value);
                if (kind == AC_VALUE) {
                    k += run_length;
                } else if (kind == AC_SIXTEEN_ZEROS) {
                    k += 15;
                } else if (kind == AC_END_OF_BLOCK) {
                    break;
                } else {
                    goto bad_code;
                }
            }
        } else {
            for (int k = 1; k < 64; k++) {
                REFILL();
                kind = ac_symbol(ac, &acc, &n, &run_length, &value);
                if (kind == AC_SIXTEEN_ZEROS) {
                    k += 15;
                    continue;
                } else if (kind == AC_END_OF_BLOCK) {
                    break;
                } else if (kind != AC_VALUE) {
                    goto bad_code;
                }
                k += run_length;
                int slot = kept_slot[natural_order[k]];
                if (slot >= 0) {
                    if (!coef) {
                        if (j->nkept >= c->kept_cap) {
                            j->status = JS_CORRUPT;
                            break;
                        }
                        coef = &j->kept[KEPT * j->nkept++];
                        memset(coef, 0, KEPT * sizeof *coef);
                        r->flags |= HAS_AC;
                    }
                    coef[slot] = (int16_t)value;
                }
            }
        }
        if (j->status != JS_OK) break;
        /* A block that needs bits past the end of the data: libjpeg would zero-fill this MCU and leave the
           rest grey. Marked like a bad code, so a stream that uses it goes to Pillow instead. */
        if (BITPOS() > c->bits) r->flags |= BAD_CODE;
        if (++blk == c->blocks_per_mcu) blk = 0;
        continue;
    bad_code:
        /* Not a code here: off the true stream (a guess), or corrupt data. Guess again one bit on. */
        r->cum = j->cum[comp];
        r->flags |= BAD_CODE;
        acc <<= 1;
        n -= 1;
        REFILL();
        blk = 0;
        resync = 1;
    }
    j->p = p;
    j->acc = acc;
    j->n = n;
    j->blk = blk;
    j->resync = resync;
}

/* The running DC sum of component comp just before record i of job j (0 if the job had none yet). */
static uint16_t cum_before(const job_t *j, size_t i, int comp) {
    const ctx_t *c = j->c;
    while (i > 0) {
        const rec_t *r = &j->rec[--i];
        if (c->blk_comp[r->blk] == comp) return r->cum;
    }
    return 0;
}

/* Thread 0, between phases: follow the parts from where each met the next, and give each used part its
   first block number and the absolute DC values before it. */
static void chain(ctx_t *c) {
    size_t g = 0, i = 0;
    int cur = 0;
    uint16_t base[3] = {0, 0, 0};
    while (g < c->total) {
        job_t *j = &c->jobs[cur];
        if (i >= j->nrec || j->rec[i].blk != (int)(g % (size_t)c->blocks_per_mcu)) {
            c->status = JS_CORRUPT; /* the data ended before the frame's last block */
            return;
        }
        size_t end = j->nrec - i > c->total - g ? i + (c->total - g) : j->nrec;
        j->used = 1;
        j->first = i;
        j->end = end;
        j->g0 = g;
        for (int comp = 0; comp < c->ncomp; comp++) {
            j->base[comp] = base[comp];
            size_t last = end;
            while (last > i && c->blk_comp[j->rec[last - 1].blk] != comp) last--;
            if (last > i) base[comp] += (uint16_t)(j->rec[last - 1].cum - cum_before(j, i, comp));
        }
        g += end - i;
        if (g < c->total) {
            if (j->status != JS_OK || j->met_job < 0) {
                c->status = JS_CORRUPT;
                return;
            }
            cur = j->met_job;
            i = j->met_rec;
        }
    }
}

/* jidctred.c's jpeg_idct_2x2 on the kept coefficients (dequantised here), then libjpeg's range limiting.
   libjpeg-turbo runs it as SIMD code on 16-bit lanes that saturates where the C code wraps. The two agree,
   and agree with this code, while every dequantised coefficient and intermediate stays within 16 bits and
   every output within +-512 of the centre; no image an encoder writes leaves that (8-bit samples give DCT
   values within +-8192), so a block that does returns -1 and the file goes to Pillow. */
static inline int descale(int64_t x, int n) { return (int)((x + ((int64_t)1 << (n - 1))) >> n); }
static inline int beyond_16_bits(int64_t x) { return x > INT16_MAX || x < INT16_MIN; }
static inline int beyond_range_limit(int x) { return x >= 512 || x < -512; }

static int idct_2x2(const int16_t *k, int dc, const uint16_t *q, uint8_t out[4]) {
    /* k[r*5+cc]: coefficient at natural row kept_rc[r], column kept_rc[cc]; k[0] is replaced by dc. */
    int ws[2][5];
    for (int cc = 0; cc < 5; cc++) {
        int64_t z[5];
        for (int r = 0; r < 5; r++) {
            int v = (r == 0 && cc == 0) ? dc : k[r * 5 + cc];
            z[r] = (int64_t)v * q[kept_rc[r] * 8 + kept_rc[cc]];
            if (beyond_16_bits(z[r])) return -1;
        }
        int64_t tmp10 = z[0] * ((int64_t)1 << (13 + 2));
        int64_t tmp0 = z[4] * -5906 + z[3] * 6967 + z[2] * -10426 + z[1] * 29692;
        ws[0][cc] = descale(tmp10 + tmp0, 13 - 2 + 2);
        ws[1][cc] = descale(tmp10 - tmp0, 13 - 2 + 2);
        if (beyond_16_bits(ws[0][cc]) || beyond_16_bits(ws[1][cc])) return -1;
    }
    for (int r = 0; r < 2; r++) {
        int64_t tmp10 = (int64_t)ws[r][0] * ((int64_t)1 << (13 + 2));
        int64_t tmp0 = (int64_t)ws[r][4] * -5906 + (int64_t)ws[r][3] * 6967 + (int64_t)ws[r][2] * -10426 +
                       (int64_t)ws[r][1] * 29692;
        int x0 = descale(tmp10 + tmp0, 13 + 2 + 3 + 2), x1 = descale(tmp10 - tmp0, 13 + 2 + 3 + 2);
        if (beyond_range_limit(x0) || beyond_range_limit(x1)) return -1;
        out[r * 2 + 0] = range_limit[x0 & 1023];
        out[r * 2 + 1] = range_limit[x1 & 1023];
    }
    return 0;
}

/* The pixels of one used part: DC sums from its base, 1x1 IDCT for luma (and 4:4:4 chroma), 2x2 for 4:2:0
   chroma. A block with no kept AC coefficient needs no IDCT: its 2x2 output is its DC value four times. */
static void convert(job_t *j) {
    ctx_t *c = j->c;
    uint16_t cum0[3];
    for (int comp = 0; comp < c->ncomp; comp++) cum0[comp] = cum_before(j, j->first, comp);
    size_t bpm = (size_t)c->blocks_per_mcu;
    size_t mcu = j->g0 / bpm, mx = mcu % c->mcux, my = mcu / c->mcux;
    int blk = (int)(j->g0 % bpm);
    size_t ow = (size_t)c->ow, oh = (size_t)c->oh, cw = c->cw;
    size_t kept = 0; /* each HAS_AC record took the next entry of the kept array */
    for (size_t i = 0; i < j->first; i++) kept += (j->rec[i].flags & HAS_AC) != 0;
    for (size_t i = j->first; i < j->end; i++) {
        const rec_t *r = &j->rec[i];
        if (r->blk != blk || (r->flags & BAD_CODE) || ((r->flags & RESYNC) && i > j->first)) {
            j->status = JS_CORRUPT;
            return;
        }
        int comp = c->blk_comp[blk];
        int dc = (int16_t)(uint16_t)(j->base[comp] + r->cum - cum0[comp]);
        const uint16_t *q = &c->quant[comp * 64];
        uint8_t flat = range_limit[descale((int64_t)dc * q[0], 3) & 1023];
        if (comp == 0) {
            size_t bx = mx * (size_t)c->lw + (size_t)c->blk_x[blk], by = my * (size_t)c->lh + (size_t)c->blk_y[blk];
            if (bx < ow && by < oh) c->yplane[by * ow + bx] = flat;
        } else if (c->keep_chroma) {
            uint8_t px[4] = {flat, flat, flat, flat};
            int bad = r->flags & HAS_AC ? idct_2x2(&j->kept[KEPT * kept++], dc, q, px)
                                        : beyond_16_bits((int64_t)dc * q[0]) ||
                                              beyond_range_limit(descale((int64_t)dc * q[0], 3));
            if (bad) {
                j->status = JS_CORRUPT;
                return;
            }
            uint8_t *o = c->cplane[comp - 1] + (2 * my) * cw + 2 * mx;
            o[0] = px[0];
            o[1] = px[1];
            o[cw] = px[2];
            o[cw + 1] = px[3];
        } else if (mx < ow && my < oh) {
            c->cplane[comp - 1][my * ow + mx] = flat;
        }
        if (++blk == c->blocks_per_mcu) {
            blk = 0;
            if (++mx == c->mcux) {
                mx = 0;
                my++;
            }
        }
    }
}

/* jdcolor.c's ycc_rgb_convert for rows [y0, y1): 16-bit fixed point, rounding folded in as libjpeg does. */
static void color(ctx_t *c, int y0, int y1) {
    size_t ow = (size_t)c->ow, cs = c->keep_chroma ? c->cw : ow;
    for (int y = y0; y < y1; y++) {
        const uint8_t *yy = c->yplane + (size_t)y * ow, *cb = c->cplane[0] + (size_t)y * cs,
                      *cr = c->cplane[1] + (size_t)y * cs;
        uint8_t *o = c->out + (size_t)y * ow * 3;
        for (size_t x = 0; x < ow; x++) {
            int l = yy[x], b = cb[x] - 128, r = cr[x] - 128;
            int rr = l + ((91881 * r + 32768) >> 16);
            int gg = l + ((-22554 * b + 32768 - 46802 * r) >> 16);
            int bb = l + ((116130 * b + 32768) >> 16);
            o[3 * x] = (uint8_t)(rr < 0 ? 0 : rr > 255 ? 255 : rr);
            o[3 * x + 1] = (uint8_t)(gg < 0 ? 0 : gg > 255 ? 255 : gg);
            o[3 * x + 2] = (uint8_t)(bb < 0 ? 0 : bb > 255 ? 255 : bb);
        }
    }
}

static void *worker(void *arg) {
    job_t *j = arg;
    ctx_t *c = j->c;
    if (j->id > 0) { /* wait until every thread exists and the parts are laid out, or told to give up */
        pthread_mutex_lock(&c->gate_lock);
        while (c->gate == 0) pthread_cond_wait(&c->gate_cond, &c->gate_lock);
        int gate = c->gate;
        pthread_mutex_unlock(&c->gate_lock);
        if (gate < 0) return NULL;
    }
    run(j, -1);
    j->nrec1 = j->nrec;
    pthread_barrier_wait(&c->barrier);
    if (j->status == JS_OK && j->id + 1 < c->threads) run(j, j->id + 1);
    pthread_barrier_wait(&c->barrier);
    if (j->id == 0) chain(c);
    pthread_barrier_wait(&c->barrier);
    if (c->status == JS_OK && j->used) convert(j);
    pthread_barrier_wait(&c->barrier);
    int ok = c->status == JS_OK;
    for (int t = 0; t < c->threads; t++) ok = ok && !(c->jobs[t].used && c->jobs[t].status != JS_OK);
    if (ok && c->ncomp == 3) color(c, c->oh * j->id / c->threads, c->oh * (j->id + 1) / c->threads);
    return NULL;
}

#ifndef JS_SOURCE_SHA256
#define JS_SOURCE_SHA256 "unknown"
#endif

/* The sha256 of the source this library was built from (build_jpegscale.sh passes it). */
const char *js_source_sha256(void) { return JS_SOURCE_SHA256; }

/*
 * Decode one baseline scan at 1/8 scale.
 *
 *   file, file_len   the whole file; scan_offset: where the entropy-coded data after the SOS header starts.
 *                    The scan must end with the end-of-image marker (one scan, no restart markers).
 *   width, height    frame size; ncomp 1 (grey) or 3 (YCbCr, interleaved in one scan)
 *   hsamp, vsamp     luma sampling factors: 1x1 (4:4:4, grey) or 2x2 (4:2:0); chroma must be 1x1
 *   counts, symbols  Huffman tables per component: counts[c*2+{0 dc,1 ac}][16], symbols[...][256]
 *   quant            per component, 64 quantisation values in natural order
 *   threads          how many threads decode (1..MAX_THREADS)
 *   out              ceil(width/8) * ceil(height/8) * ncomp bytes: grey, or RGB as libjpeg converts it
 *   parts_used       set to how many threads' records the output was stitched from (1: no part met)
 * Returns 0, or a negative JS_* code (the caller then decodes with Pillow).
 */
int js_decode(const uint8_t *file, size_t file_len, size_t scan_offset, int width, int height, int ncomp,
              int hsamp, int vsamp, const uint8_t *counts, const uint8_t *symbols, const uint16_t *quant,
              int threads, uint8_t *out, int *parts_used) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    if (pthread_once(&once, init_tables) != 0) return JS_UNSUPPORTED;
    if (scan_offset > file_len) return JS_CORRUPT;
    if (width <= 0 || height <= 0 || (ncomp != 1 && ncomp != 3)) return JS_UNSUPPORTED;
    if (!((hsamp == 1 && vsamp == 1) || (ncomp == 3 && hsamp == 2 && vsamp == 2))) return JS_UNSUPPORTED;
    const uint8_t *scan = file + scan_offset;
    size_t scan_len = file_len - scan_offset;
    if (scan_len > (UINT32_MAX - 64) / 8) return JS_UNSUPPORTED; /* bit positions are 32-bit */
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;

    ctx_t *c = calloc(1, sizeof *c);
    huff_t *tables = malloc(sizeof(huff_t) * 2 * (size_t)ncomp);
    uint8_t *clean = malloc(scan_len + PAD_BYTES);
    int status = c && tables && clean ? JS_OK : JS_NOMEM;
    for (int k = 0; k < 2 * ncomp && status == JS_OK; k++)
        status = build_huff(&tables[k], &counts[k * 16], &symbols[k * 256], k % 2 == 0);

    /* Un-stuff: drop the zero byte after each 0xFF, up to the end-of-image marker (fill bytes 0xFF before a
       marker are allowed). Any other marker (restart, another scan, DNL) is not handled here; data that ends
       without one is truncated. */
    size_t w = 0;
    int ended = 0;
    for (size_t i = 0; i < scan_len && status == JS_OK && !ended;) {
        const uint8_t *ff = memchr(scan + i, 0xFF, scan_len - i);
        size_t chunk = ff ? (size_t)(ff - (scan + i)) : scan_len - i;
        memcpy(clean + w, scan + i, chunk);
        w += chunk;
        i += chunk;
        if (!ff) break;
        size_t first_ff = i;
        while (i + 1 < scan_len && scan[i + 1] == 0xFF) i++;
        if (i + 1 >= scan_len) break;
        if (scan[i + 1] == 0x00 && i != first_ff) {
            /* fill bytes then a stuffed zero: libjpeg-turbo's fast path takes FF FF for a marker and leaves
               stray coefficients in the block, which this decoder would not reproduce */
            status = JS_UNSUPPORTED;
        } else if (scan[i + 1] == 0x00) {
            clean[w++] = 0xFF;
            i += 2;
        } else if (scan[i + 1] == 0xD9) {
            ended = 1;
        } else {
            status = JS_UNSUPPORTED;
        }
    }
    if (status == JS_OK && !ended) status = JS_CORRUPT;

    if (status == JS_OK) {
        memset(clean + w, 0, PAD_BYTES);
        c->data = clean;
        c->bits = w * 8;
        c->ncomp = ncomp;
        c->quant = quant;
        c->out = out;
        c->ow = (width + 7) / 8;
        c->oh = (height + 7) / 8;
        c->lw = hsamp;
        c->lh = vsamp;
        if (ncomp == 1) { /* one component: blocks in raster order, not padded to MCUs */
            c->mcux = (size_t)c->ow;
            c->mcuy = (size_t)c->oh;
            c->lw = c->lh = 1;
            c->blocks_per_mcu = 1;
        } else {
            c->mcux = (size_t)(width + 8 * hsamp - 1) / (size_t)(8 * hsamp);
            c->mcuy = (size_t)(height + 8 * vsamp - 1) / (size_t)(8 * vsamp);
            c->blocks_per_mcu = hsamp * vsamp + 2;
        }
        c->keep_chroma = ncomp == 3 && hsamp == 2; /* 4:2:0: chroma gets the 2x2 IDCT; otherwise DC only */
        for (int b = 0; b < c->blocks_per_mcu; b++) {
            int comp = b < c->lw * c->lh ? 0 : b - c->lw * c->lh + 1;
            c->blk_comp[b] = comp;
            c->blk_x[b] = comp == 0 ? b % c->lw : 0;
            c->blk_y[b] = comp == 0 ? b / c->lw : 0;
            c->blk_keep[b] = comp > 0 && c->keep_chroma;
            c->dc[b] = &tables[comp * 2];
            c->ac[b] = &tables[comp * 2 + 1];
        }
        size_t mcus = c->mcux * c->mcuy;
        c->total = mcus * (size_t)c->blocks_per_mcu;
        c->rec_cap = c->total + 1024;
        c->kept_cap = c->keep_chroma ? mcus * 2 + 1024 : 0;
        c->cw = c->keep_chroma ? 2 * c->mcux : (size_t)c->ow;
        size_t ch = c->keep_chroma ? 2 * c->mcuy : (size_t)c->oh;
        size_t plane = (size_t)c->ow * (size_t)c->oh;
        c->yplane = ncomp == 1 ? out : malloc(plane + 2 * c->cw * ch);
        if (!c->yplane) status = JS_NOMEM;
        if (ncomp == 3 && c->yplane) {
            c->cplane[0] = c->yplane + plane;
            c->cplane[1] = c->cplane[0] + c->cw * ch;
        }
        /* Below ~16 KB a part, starting threads costs more than it saves. */
        if ((size_t)threads > w / 16384) threads = w / 16384 > 1 ? (int)(w / 16384) : 1;
    }

    pthread_t tids[MAX_THREADS];
    int created = 0;
    if (status == JS_OK) {
        pthread_mutex_init(&c->gate_lock, NULL);
        pthread_cond_init(&c->gate_cond, NULL);
        for (int t = 1; t < threads; t++) {
            c->jobs[t].c = c;
            c->jobs[t].id = t;
            if (pthread_create(&tids[t], NULL, worker, &c->jobs[t]) != 0) break;
            created++;
        }
        c->threads = 1 + created; /* fewer if a thread could not be started */
        for (int t = 0; t < c->threads && status == JS_OK; t++) {
            job_t *j = &c->jobs[t];
            if (t == 0) { /* the others were set before pthread_create, and their threads read them already */
                j->c = c;
                j->id = 0;
            }
            j->p = clean + w * (size_t)t / (size_t)c->threads;
            j->end_bit = t + 1 < c->threads ? (w * (size_t)(t + 1) / (size_t)c->threads) * 8 : SIZE_MAX;
            j->met_job = -1;
            j->rec = malloc(sizeof(rec_t) * c->rec_cap);
            j->kept = c->keep_chroma ? malloc(sizeof(int16_t) * KEPT * c->kept_cap) : NULL;
            if (!j->rec || (c->keep_chroma && !j->kept)) status = JS_NOMEM;
        }
        int barrier = status == JS_OK && pthread_barrier_init(&c->barrier, NULL, (unsigned)c->threads) == 0;
        if (!barrier) status = status == JS_OK ? JS_NOMEM : status;
        pthread_mutex_lock(&c->gate_lock);
        c->gate = status == JS_OK ? 1 : -1;
        pthread_cond_broadcast(&c->gate_cond);
        pthread_mutex_unlock(&c->gate_lock);
        if (status == JS_OK) worker(&c->jobs[0]);
        for (int t = 1; t <= created; t++) pthread_join(tids[t], NULL);
        if (barrier) pthread_barrier_destroy(&c->barrier);
        if (status == JS_OK) {
            status = c->status;
            *parts_used = 0;
            for (int t = 0; t < c->threads && status == JS_OK; t++) {
                if (c->jobs[t].used && c->jobs[t].status != JS_OK) status = c->jobs[t].status;
                *parts_used += c->jobs[t].used;
            }
        }
        pthread_cond_destroy(&c->gate_cond);
        pthread_mutex_destroy(&c->gate_lock);
    }
    if (c) {
        for (int t = 0; t < MAX_THREADS; t++) {
            free(c->jobs[t].rec);
            free(c->jobs[t].kept);
        }
        if (ncomp == 3) free(c->yplane);
    }
    free(c);
    free(clean);
    free(tables);
    return status;
}
