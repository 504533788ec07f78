/* Block records: the sum64 payload checksum, and the check of records laid back to back
 * (a transfer response), optionally received from a socket in the same pass.
 *
 * A record is one stored block: header | zero padding up to a multiple of RECORD_ALIGN |
 * payload (mooncake/store/block_object.py has the header layout and sum64's definition;
 * mooncake/store/native.py the Python twin of every function here). Plain C, no
 * dependencies; loaded with ctypes, which releases the GIL while these run.
 *
 * Status of a record (the Python side re-checks any non-zero one for its precise error):
 *   0 ok: magic, header length, payload length, key and sum64 all agree with the header's
 *     fixed fields (the header's CRC and the rest of it are checked by the caller's
 *     decode, memoised on the exact header bytes);
 *   1 bad framing (record too short, bad magic, header length out of range);
 *   2 payload length differs from the header's;
 *   3 payload checksum differs;
 *   4 key differs from the requested key (or the header has none);
 *   5 checksum algorithm is not sum64: the caller computes it.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#define PAGE_WORDS 512
#define RECORD_ALIGN 64
#define FIXED_BYTES 96
#define CRC_BYTES 4
#define HAS_KEY 1

static uint64_t load_u64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8); /* unaligned-safe; little-endian hosts only (x86-64, aarch64) */
    return v;
}

static uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint32_t crc32_bytes(const uint8_t *p, int64_t n) {
    /* zlib's CRC-32, bit by bit: only used on the < 8 tail bytes of odd-sized payloads. */
    uint32_t c = 0xFFFFFFFFu;
    for (int64_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
}

/* Weighted sum of pages j0..j1-1 of the payload at p: sum_j (2j + 1) * page_sum_j. */
static uint64_t pages_sum(const uint8_t *p, int64_t j0, int64_t j1) {
    uint64_t total = 0;
    for (int64_t j = j0; j < j1; j++) {
        const uint8_t *pg = p + j * PAGE_WORDS * 8;
        /* four accumulators: lets the compiler vectorise without reassociation flags */
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (int w = 0; w < PAGE_WORDS; w += 4) {
            s0 += load_u64(pg + 8 * w);
            s1 += load_u64(pg + 8 * w + 8);
            s2 += load_u64(pg + 8 * w + 16);
            s3 += load_u64(pg + 8 * w + 24);
        }
        total += (s0 + s1 + s2 + s3) * (uint64_t)(2 * j + 1);
    }
    return total;
}

/* sum64 of n bytes at p whose first j0 pages are already summed into partial. */
static uint64_t sum64_from(const uint8_t *p, int64_t n, int64_t j0, uint64_t partial) {
    int64_t nwords = n >> 3, npages = nwords / PAGE_WORDS;
    uint64_t total = partial + pages_sum(p, j0, npages);
    uint64_t rest = 0;
    for (int64_t w = npages * PAGE_WORDS; w < nwords; w++) rest += load_u64(p + 8 * w);
    total += rest * (uint64_t)(2 * npages + 1);
    if (n & 7) total += (uint64_t)crc32_bytes(p + (nwords << 3), n & 7) << 32;
    return total + (uint64_t)n;
}

/* sum64: sum_j (2j + 1) * page_sum_j + (tail words) * (2 npages + 1) + (crc32(tail bytes) << 32) + n,
 * all mod 2^64, pages being 4 KiB of little-endian uint64 words. */
uint64_t mc_sum64(const uint8_t *p, int64_t n) { return sum64_from(p, n, 0, 0); }

/* Copy n bytes from src to dst and return their sum64, in one pass over src: each page
 * is summed from dst right after it is copied, while it is in L1. */
uint64_t mc_copy_sum64(uint8_t *dst, const uint8_t *src, int64_t n) {
    int64_t page = PAGE_WORDS * 8, npages = n / page;
    uint64_t partial = 0;
    for (int64_t j = 0; j < npages; j++) {
        memcpy(dst + j * page, src + j * page, (size_t)page);
        partial += pages_sum(dst, j, j + 1);
    }
    memcpy(dst + npages * page, src + npages * page, (size_t)(n - npages * page));
    return sum64_from(dst, n, npages, partial);
}

/* Copy nseg segments of seg bytes between two strided layouts and return the sum64 of
 * the nseg * seg bytes in segment order (a record's payload order), in one pass: each
 * 4 KiB page of the contiguous side is summed as soon as its segments are copied, while
 * it is in cache. A block's K/V in an engine's paged pool is one segment per
 * (layer, K|V), a fixed stride apart; in a record they are back to back, so one of the
 * two strides is seg: that side (dst when dst_stride == seg) is the one summed. */
uint64_t mc_copy_sum64_strided(uint8_t *dst, int64_t dst_stride, const uint8_t *src, int64_t src_stride, int64_t seg,
                               int64_t nseg) {
    int64_t page = PAGE_WORDS * 8, n = seg * nseg, done = 0;
    const uint8_t *c = dst_stride == seg ? dst : src;
    uint64_t partial = 0;
    for (int64_t i = 0; i < nseg; i++) {
        memcpy(dst + i * dst_stride, src + i * src_stride, (size_t)seg);
        int64_t ready = ((i + 1) * seg) / page;
        if (ready > done) {
            partial += pages_sum(c, done, ready);
            done = ready;
        }
    }
    return sum64_from(c, n, done, partial);
}

/* mc_copy_sum64_strided for n blocks in one call (no per-block call overhead): block i is
 * copied from src_base + src_off[i] to dst_base + dst_off[i] and its sum64 written to
 * sums[i]. The strides are those of mc_copy_sum64_strided, the same for every block. */
void mc_copy_sum64_many(uint8_t *dst_base, const int64_t *dst_off, int64_t dst_stride, const uint8_t *src_base,
                        const int64_t *src_off, int64_t src_stride, int64_t seg, int64_t nseg, int64_t n,
                        uint64_t *sums) {
    for (int64_t i = 0; i < n; i++)
        sums[i] = mc_copy_sum64_strided(dst_base + dst_off[i], dst_stride, src_base + src_off[i], src_stride, seg, nseg);
}

/* Copy n blocks, each nseg segments of seg bytes (segment j of block i at base + off[i]
 * + j * stride on either side), with no checksum: the same-host pool -> pool hand-off,
 * whose source is held unchanged by its owner while this runs. */
void mc_copy_many(uint8_t *dst_base, const int64_t *dst_off, int64_t dst_stride, const uint8_t *src_base,
                  const int64_t *src_off, int64_t src_stride, int64_t seg, int64_t nseg, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < nseg; j++)
            memcpy(dst_base + dst_off[i] + j * dst_stride, src_base + src_off[i] + j * src_stride, (size_t)seg);
}

static int64_t align_up(int64_t x) { return (x + RECORD_ALIGN - 1) & ~(int64_t)(RECORD_ALIGN - 1); }

/* Check one record of rlen bytes at r against key (16 bytes, or NULL); the first j0 pages
 * of its payload are already summed into partial (a receiver sums them as they arrive). */
static uint8_t check_one(const uint8_t *r, int64_t rlen, const uint8_t *key, int32_t *hlen_out, uint64_t *sum_out,
                         int64_t j0, uint64_t partial) {
    *hlen_out = 0;
    *sum_out = 0;
    if (rlen < FIXED_BYTES + CRC_BYTES || memcmp(r, "MKVB", 4) != 0) return 1;
    int64_t hlen = load_u32(r + 8);
    if (hlen < FIXED_BYTES + CRC_BYTES || align_up(hlen) > rlen) return 1;
    *hlen_out = (int32_t)hlen;
    int64_t off = align_up(hlen), plen = rlen - off;
    if ((uint64_t)plen != load_u64(r + 40)) return 2;
    if (key != NULL && (!(r[7] & HAS_KEY) || memcmp(r + 64, key, 16) != 0)) return 4;
    if (r[56] != 0) return 5;
    uint64_t s = sum64_from(r + off, plen, j0, partial);
    *sum_out = s;
    return s == load_u64(r + 48) ? 0 : 3;
}

/* Check n records back to back in buf (record i is rlen[i] bytes); keys: n x 16 bytes or
 * NULL. Writes each record's header length (0 if unframed), payload sum64 and status.
 * Returns how many records are not ok. */
int64_t mc_check_records(const uint8_t *buf, const uint64_t *rlen, int64_t n, const uint8_t *keys,
                         int32_t *hlen_out, uint64_t *sum_out, uint8_t *status_out) {
    int64_t off = 0, bad = 0;
    for (int64_t i = 0; i < n; i++) {
        status_out[i] = check_one(buf + off, (int64_t)rlen[i], keys ? keys + 16 * i : NULL, hlen_out + i, sum_out + i,
                                  0, 0);
        bad += status_out[i] != 0;
        off += (int64_t)rlen[i];
    }
    return bad;
}

/* Receive n records (sum of rlen bytes) from socket fd into buf and check each one as
 * soon as it has fully arrived; a record longer than a chunk has its payload pages summed
 * as they arrive. Either way every byte is summed while still in cache; chunk bounds one
 * recv so that this holds. A blocking fd waits in recv (its SO_RCVTIMEO, if any, ends a
 * stalled receive: EAGAIN is then a timeout); a non-blocking one (a Python socket with a
 * timeout) waits in poll for up to timeout_ms per chunk. Returns the number of records
 * not ok (>= 0), or -1 peer closed, -2 timed out, -3 another error (errno in *err). */
int64_t mc_recv_records(int fd, uint8_t *buf, const uint64_t *rlen, int64_t n, const uint8_t *keys,
                        int32_t *hlen_out, uint64_t *sum_out, uint8_t *status_out, int64_t chunk,
                        int32_t timeout_ms, int32_t *err) {
    int64_t total = 0, got = 0, done = 0, rec_start = 0, bad = 0;
    int64_t pages_done = 0; /* of the record being received */
    uint64_t partial = 0;
    int flags = fcntl(fd, F_GETFL);
    int blocking = flags >= 0 && !(flags & O_NONBLOCK);
    for (int64_t i = 0; i < n; i++) total += (int64_t)rlen[i];
    *err = 0;
    while (done < n) {
        /* every record wholly received so far */
        while (done < n && rec_start + (int64_t)rlen[done] <= got) {
            status_out[done] = check_one(buf + rec_start, (int64_t)rlen[done], keys ? keys + 16 * done : NULL,
                                         hlen_out + done, sum_out + done, pages_done, partial);
            bad += status_out[done] != 0;
            rec_start += (int64_t)rlen[done];
            done++;
            pages_done = 0;
            partial = 0;
        }
        if (done == n) break;
        /* the whole pages of the record in progress that have arrived (check_one redoes
         * the framing checks; these pages are only summed once its header is framed) */
        int64_t rl = (int64_t)rlen[done];
        if (got - rec_start >= 12) {
            int64_t hlen = load_u32(buf + rec_start + 8);
            if (hlen >= FIXED_BYTES + CRC_BYTES && align_up(hlen) <= rl) {
                int64_t off = rec_start + align_up(hlen);
                int64_t npages = ((rl - align_up(hlen)) >> 3) / PAGE_WORDS;
                int64_t avail = got > off ? (got - off) / (PAGE_WORDS * 8) : 0;
                if (avail > npages) avail = npages;
                if (avail > pages_done) {
                    partial += pages_sum(buf + off, pages_done, avail);
                    pages_done = avail;
                }
            }
        }
        int64_t want = total - got < chunk ? total - got : chunk;
        ssize_t r = recv(fd, buf + got, (size_t)want, 0);
        if (r > 0) {
            got += r;
            continue;
        }
        if (r == 0) return -1;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (blocking) return -2; /* SO_RCVTIMEO elapsed without a byte */
            struct pollfd pfd = {fd, POLLIN, 0};
            int pr = poll(&pfd, 1, timeout_ms < 0 ? -1 : timeout_ms);
            if (pr == 0) return -2;
            if (pr < 0 && errno != EINTR) {
                *err = errno;
                return -3;
            }
            continue;
        }
        *err = errno;
        return -3;
    }
    return bad;
}
