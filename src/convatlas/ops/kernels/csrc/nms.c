/* Greedy NMS with a uniform-grid index, soft-NMS and a stable radix argsort of float32 scores.
   Plain C99 without PyTorch headers, called through ctypes by convatlas/ops/kernels/nms.py.
   Built with -ffp-contract=off: the IoU must be computed with exactly the operations written here. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>


#define DEFINE_NMS(SUFFIX, T, NEXTAFTER)                                                                           \
                                                                                                                    \
static inline int over_##SUFFIX(T ax1, T ay1, T ax2, T ay2, T aarea, const T *b, T barea, double thr) {             \
    T xx1 = ax1 > b[0] ? ax1 : b[0];                                                                                \
    T yy1 = ay1 > b[1] ? ay1 : b[1];                                                                                \
    T xx2 = ax2 < b[2] ? ax2 : b[2];                                                                                \
    T yy2 = ay2 < b[3] ? ay2 : b[3];                                                                                \
    T w = xx2 - xx1; if (!(w > 0)) w = 0;                                                                           \
    T h = yy2 - yy1; if (!(h > 0)) h = 0;                                                                           \
    T inter = w * h;                                                                                                \
    T ovr = inter / (aarea + barea - inter);                                                                        \
    return (double)ovr > thr;                                                                                       \
}                                                                                                                   \
                                                                                                                    \
/* Quadratic loop over kept boxes: any threshold, any coordinates. */                                               \
static int64_t plain_##SUFFIX(const T *b, const int64_t *cls, int64_t n, double thr, uint8_t *keep) {             \
    int64_t *kept = (int64_t *)malloc(sizeof(int64_t) * (n > 0 ? n : 1));                                           \
    if (!kept) return -1;                                                                                           \
    int64_t nk = 0;                                                                                                 \
    for (int64_t i = 0; i < n; i++) {                                                                               \
        const T *bi = b + 4 * i;                                                                                    \
        T ai = (bi[2] - bi[0]) * (bi[3] - bi[1]);                                                                   \
        int sup = 0;                                                                                                \
        for (int64_t q = 0; q < nk && !sup; q++) {                                                                  \
            int64_t j = kept[q];                                                                                    \
            if (cls && cls[j] != cls[i]) continue;                                                                  \
            const T *bj = b + 4 * j;                                                                                \
            T aj = (bj[2] - bj[0]) * (bj[3] - bj[1]);                                                               \
            sup = over_##SUFFIX(bj[0], bj[1], bj[2], bj[3], aj, bi, ai, thr);                                       \
        }                                                                                                           \
        keep[i] = (uint8_t)!sup;                                                                                    \
        if (!sup) kept[nk++] = i;                                                                                   \
    }                                                                                                               \
    free(kept);                                                                                                     \
    return nk;                                                                                                      \
}                                                                                                                   \
                                                                                                                    \
/* Grid-indexed loop for one segment (one category): threshold >= 0 and finite coordinates.                       \
   Each cell keeps its kept boxes in a chain of blocks of 8 (structure of arrays, unused slots zero: IoU 0 or NaN,  \
   never above a threshold >= 0), so a block is tested without branches and the compiler can vectorise it. A kept  \
   box sits in every cell it covers and may be tested more than once: redundant, never wrong. */                    \
typedef struct { T x1[8], y1[8], x2[8], y2[8], area[8]; int64_t next; int count; } block_##SUFFIX;                  \
                                                                                                                    \
static inline int block_over_##SUFFIX(const block_##SUFFIX *k, const T *bi, T ai, T above) {                       \
    int hit = 0;                                                                                                    \
    for (int j = 0; j < 8; j++) {                                                                                   \
        T xx1 = k->x1[j] > bi[0] ? k->x1[j] : bi[0];                                                                \
        T yy1 = k->y1[j] > bi[1] ? k->y1[j] : bi[1];                                                                \
        T xx2 = k->x2[j] < bi[2] ? k->x2[j] : bi[2];                                                                \
        T yy2 = k->y2[j] < bi[3] ? k->y2[j] : bi[3];                                                                \
        T w = xx2 - xx1; w = w > 0 ? w : 0;                                                                         \
        T h = yy2 - yy1; h = h > 0 ? h : 0;                                                                         \
        T inter = w * h;                                                                                            \
        T ovr = inter / (k->area[j] + ai - inter);                                                                  \
        hit |= ovr >= above;                                                                                        \
    }                                                                                                               \
    return hit;                                                                                                     \
}                                                                                                                   \
                                                                                                                    \
static int64_t grid_##SUFFIX(const T *b, int64_t n, double thr, uint8_t *keep) {                                   \
    double minx = INFINITY, miny = INFINITY, maxx = -INFINITY, maxy = -INFINITY, sw = 0, sh = 0;                   \
    int64_t nv = 0;                                                                                                 \
    for (int64_t i = 0; i < n; i++) {                                                                               \
        const T *bi = b + 4 * i;                                                                                    \
        if (!(bi[2] > bi[0] && bi[3] > bi[1])) continue;                                                            \
        if (bi[0] < minx) minx = bi[0];                                                                             \
        if (bi[1] < miny) miny = bi[1];                                                                             \
        if (bi[2] > maxx) maxx = bi[2];                                                                             \
        if (bi[3] > maxy) maxy = bi[3];                                                                             \
        sw += (double)bi[2] - (double)bi[0];                                                                        \
        sh += (double)bi[3] - (double)bi[1];                                                                        \
        nv++;                                                                                                       \
    }                                                                                                               \
    if (nv == 0) { for (int64_t i = 0; i < n; i++) keep[i] = 1; return n; }                                        \
    double cw = sw / nv, ch = sh / nv;                                                                              \
    if (!(cw > 0)) cw = 1;                                                                                          \
    if (!(ch > 0)) ch = 1;                                                                                          \
    double ex = maxx - minx, ey = maxy - miny;                                                                      \
    int64_t gx, gy;                                                                                                 \
    for (;;) {                                                                                                      \
        double fx = ceil(ex / cw), fy = ceil(ey / ch);                                                              \
        if (fx < 1) fx = 1;                                                                                         \
        if (fy < 1) fy = 1;                                                                                         \
        if (fx * fy <= 4.0 * (double)nv + 16) { gx = (int64_t)fx; gy = (int64_t)fy; break; }                        \
        cw *= 2; ch *= 2;                                                                                           \
    }                                                                                                               \
    const double icw = 1.0 / cw, ich = 1.0 / ch; /* x -> cell is monotone: multiplication by a positive constant */ \
    /* IoU > thr (in double) <=> IoU >= the smallest T above thr: the test stays in T, branch-free */              \
    T above = (T)thr;                                                                                               \
    if ((double)above <= thr) above = NEXTAFTER(above, INFINITY);                                                   \
    int64_t *head = (int64_t *)malloc(sizeof(int64_t) * gx * gy);                                                   \
    int64_t *tail = (int64_t *)malloc(sizeof(int64_t) * gx * gy);                                                   \
    int64_t cap = 256, used = 0, nk = 0;                                                                            \
    block_##SUFFIX *blocks = (block_##SUFFIX *)malloc(sizeof(block_##SUFFIX) * cap);                                \
    if (!head || !tail || !blocks) { free(head); free(tail); free(blocks); return -1; }                            \
    for (int64_t c = 0; c < gx * gy; c++) head[c] = tail[c] = -1;                                                   \
    for (int64_t i = 0; i < n; i++) {                                                                               \
        const T *bi = b + 4 * i;                                                                                    \
        if (!(bi[2] > bi[0] && bi[3] > bi[1])) { keep[i] = 1; nk++; continue; } /* no overlap with anything */     \
        T ai = (bi[2] - bi[0]) * (bi[3] - bi[1]);                                                                   \
        /* truncation is floor here: valid boxes start at or after (minx, miny) */                                  \
        int64_t cx0 = (int64_t)(((double)bi[0] - minx) * icw), cx1 = (int64_t)(((double)bi[2] - minx) * icw);     \
        int64_t cy0 = (int64_t)(((double)bi[1] - miny) * ich), cy1 = (int64_t)(((double)bi[3] - miny) * ich);     \
        cx0 = cx0 < 0 ? 0 : cx0;                                                                                    \
        cy0 = cy0 < 0 ? 0 : cy0;                                                                                    \
        cx1 = cx1 >= gx ? gx - 1 : cx1;                                                                             \
        cy1 = cy1 >= gy ? gy - 1 : cy1;                                                                             \
        int sup = 0;                                                                                                \
        /* the middle cell first: a box's likeliest suppressor overlaps it most and so covers its middle */         \
        int64_t mid = ((cy0 + cy1) / 2) * gx + (cx0 + cx1) / 2;                                                     \
        for (int64_t q = head[mid]; q >= 0 && !sup; q = blocks[q].next)                                             \
            sup = block_over_##SUFFIX(blocks + q, bi, ai, above);                                                   \
        for (int64_t cy = cy0; cy <= cy1 && !sup; cy++)                                                             \
            for (int64_t cx = cx0; cx <= cx1 && !sup; cx++) {                                                       \
                if (cy * gx + cx == mid) continue;                                                                  \
                for (int64_t q = head[cy * gx + cx]; q >= 0 && !sup; q = blocks[q].next)                            \
                    sup = block_over_##SUFFIX(blocks + q, bi, ai, above);                                           \
            }                                                                                                       \
        keep[i] = (uint8_t)!sup;                                                                                    \
        if (sup) continue;                                                                                          \
        nk++;                                                                                                       \
        for (int64_t cy = cy0; cy <= cy1; cy++)                                                                     \
            for (int64_t cx = cx0; cx <= cx1; cx++) {                                                               \
                int64_t cell = cy * gx + cx, t = tail[cell];                                                        \
                if (t < 0 || blocks[t].count == 8) { /* append a zeroed block: lists stay in keep order */          \
                    if (used == cap) {                                                                              \
                        cap *= 2;                                                                                   \
                        block_##SUFFIX *grown = (block_##SUFFIX *)realloc(blocks, sizeof(block_##SUFFIX) * cap);    \
                        if (!grown) { free(head); free(tail); free(blocks); return -1; }                            \
                        blocks = grown;                                                                             \
                    }                                                                                               \
                    memset(blocks + used, 0, sizeof(block_##SUFFIX));                                               \
                    blocks[used].next = -1;                                                                         \
                    if (t >= 0) blocks[t].next = used; else head[cell] = used;                                      \
                    t = tail[cell] = used++;                                                                        \
                }                                                                                                   \
                block_##SUFFIX *k = blocks + t;                                                                     \
                int j = k->count++;                                                                                 \
                k->x1[j] = bi[0]; k->y1[j] = bi[1]; k->x2[j] = bi[2]; k->y2[j] = bi[3]; k->area[j] = ai;            \
            }                                                                                                       \
    }                                                                                                               \
    free(head); free(tail); free(blocks);                                                                           \
    return nk;                                                                                                      \
}                                                                                                                   \
                                                                                                                    \
/* Boxes sorted by category then decreasing score; seg[s]..seg[s+1] is one category. Returns kept count or -1. */   \
int64_t nms_##SUFFIX(const T *b, const int64_t *seg, int64_t nseg, double thr, uint8_t *keep) {                    \
    int64_t n = seg[nseg], total = 0;                                                                               \
    int finite = 1;                                                                                                 \
    for (int64_t i = 0; i < 4 * n; i++) if (!isfinite((double)b[i])) { finite = 0; break; }                        \
    for (int64_t s = 0; s < nseg; s++) {                                                                            \
        int64_t lo = seg[s], m = seg[s + 1] - seg[s];                                                               \
        int64_t r = (finite && thr >= 0) ? grid_##SUFFIX(b + 4 * lo, m, thr, keep + lo)                             \
                                         : plain_##SUFFIX(b + 4 * lo, NULL, m, thr, keep + lo);                     \
        if (r < 0) return -1;                                                                                       \
        total += r;                                                                                                 \
    }                                                                                                               \
    return total;                                                                                                   \
}

DEFINE_NMS(f32, float, nextafterf)
DEFINE_NMS(f64, double, nextafter)

/* Soft-NMS (Bodla et al. 2017), O(N^2): take the alive box with the highest score (ties: lower index), decay the
   others (linear: s *= 1 - IoU when IoU > iou_thr; gaussian: s *= exp(-IoU^2 / sigma)), drop those below score_thr.
   scores is updated in place; writes the selected indices and their scores; returns how many. */
#define DEFINE_SOFT_NMS(SUFFIX, T, EXP)                                                                            \
int64_t soft_nms_##SUFFIX(const T *b, T *s, int64_t n, int64_t gaussian, double sigma, double iou_thr,            \
                          double score_thr, int64_t *keep, T *kept_scores) {                                      \
    uint8_t *alive = (uint8_t *)malloc(n > 0 ? n : 1);                                                              \
    T *area = (T *)malloc(sizeof(T) * (n > 0 ? n : 1));                                                             \
    if (!alive || !area) { free(alive); free(area); return -1; }                                                   \
    for (int64_t i = 0; i < n; i++) {                                                                               \
        alive[i] = (double)s[i] >= score_thr;                                                                       \
        area[i] = (b[4 * i + 2] - b[4 * i]) * (b[4 * i + 3] - b[4 * i + 1]);                                       \
    }                                                                                                               \
    int64_t nk = 0;                                                                                                 \
    for (;;) {                                                                                                      \
        int64_t m = -1;                                                                                             \
        for (int64_t i = 0; i < n; i++)                                                                             \
            if (alive[i] && (m < 0 || s[i] > s[m])) m = i;                                                          \
        if (m < 0) break;                                                                                           \
        keep[nk] = m; kept_scores[nk++] = s[m]; alive[m] = 0;                                                       \
        const T *p = b + 4 * m;                                                                                     \
        for (int64_t i = 0; i < n; i++) {                                                                           \
            if (!alive[i]) continue;                                                                                \
            const T *q = b + 4 * i;                                                                                 \
            T xx1 = p[0] > q[0] ? p[0] : q[0], yy1 = p[1] > q[1] ? p[1] : q[1];                                     \
            T xx2 = p[2] < q[2] ? p[2] : q[2], yy2 = p[3] < q[3] ? p[3] : q[3];                                     \
            T w = xx2 - xx1; w = w > 0 ? w : 0;                                                                     \
            T h = yy2 - yy1; h = h > 0 ? h : 0;                                                                     \
            T inter = w * h;                                                                                        \
            T iou = inter / (area[m] + area[i] - inter);                                                            \
            if (iou != iou) iou = 0; /* NaN (a NaN box, or two empty ones): no overlap, as in NMS */               \
            if (gaussian) s[i] = s[i] * EXP(-(iou * iou) / (T)sigma);                                               \
            else if ((double)iou > iou_thr) s[i] = s[i] * (1 - iou);                                                \
            if (!((double)s[i] >= score_thr)) alive[i] = 0;                                                         \
        }                                                                                                           \
    }                                                                                                               \
    free(alive); free(area);                                                                                        \
    return nk;                                                                                                      \
}

DEFINE_SOFT_NMS(f32, float, expf)
DEFINE_SOFT_NMS(f64, double, exp)

/* Stable descending argsort of float32 scores: LSD radix sort, 3 passes of 11 bits. Equal scores keep index order;
   -0.0 equals 0.0; NaN (positive sign) sorts first, as in torch.sort(descending=True). Returns 0 or -1. */
int64_t argsort_desc_f32(const float *s, int64_t n, int64_t *out) {
    uint32_t *key = (uint32_t *)malloc(sizeof(uint32_t) * 2 * (n > 0 ? n : 1));
    int64_t *tmp = (int64_t *)malloc(sizeof(int64_t) * (n > 0 ? n : 1));
    if (!key || !tmp) { free(key); free(tmp); return -1; }
    uint32_t *key2 = key + n;
    for (int64_t i = 0; i < n; i++) {
        union { float f; uint32_t u; } v;
        v.f = s[i];
        uint32_t u = v.u == 0x80000000u ? 0u : v.u;
        u = (u & 0x80000000u) ? ~u : (u | 0x80000000u); /* ascending unsigned order == ascending float order */
        key[i] = ~u;                                     /* descending */
        out[i] = i;
    }
    uint32_t *src_k = key, *dst_k = key2;
    int64_t *src_i = out, *dst_i = tmp;
    for (int shift = 0; shift < 33; shift += 11) {
        int64_t count[2049] = {0};
        for (int64_t i = 0; i < n; i++) count[((src_k[i] >> shift) & 2047u) + 1]++;
        for (int b = 0; b < 2048; b++) count[b + 1] += count[b];
        for (int64_t i = 0; i < n; i++) {
            int64_t pos = count[(src_k[i] >> shift) & 2047u]++;
            dst_k[pos] = src_k[i];
            dst_i[pos] = src_i[i];
        }
        uint32_t *tk = src_k; src_k = dst_k; dst_k = tk;
        int64_t *ti = src_i; src_i = dst_i; dst_i = ti;
    }
    if (src_i != out) for (int64_t i = 0; i < n; i++) out[i] = src_i[i];
    free(key); free(tmp);
    return 0;
}
