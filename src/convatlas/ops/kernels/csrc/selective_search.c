/* Selective search kernels (convatlas.detection.proposals): graph-based segmentation, region statistics,
   adjacency and hierarchical grouping. Described in convatlas/detection/_ss_native.py. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ graph-based segmentation */

static int32_t find_root(int32_t *parent, int32_t x) {
    int32_t root = x;
    while (parent[root] != root) root = parent[root];
    while (parent[x] != root) { int32_t next = parent[x]; parent[x] = root; x = next; }
    return root;
}

/* The two pixels of edge q of the h x w grid, numbered as the weights are: all right edges (y, x+1)-(y, x) in
   raster order, then down (y+1, x)-(y, x), down-right (y+1, x+1)-(y, x), up-right (y, x+1)-(y+1, x). */
static void edge_ends(int64_t h, int64_t w, int64_t q, int32_t *a, int32_t *b) {
    int64_t right = h * (w - 1), down = (h - 1) * w, diag = (h - 1) * (w - 1), y, x;
    if (q < right) {
        y = q / (w - 1); x = q % (w - 1);
        *a = (int32_t)(y * w + x + 1); *b = (int32_t)(y * w + x);
        return;
    }
    q -= right;
    if (q < down) {
        y = q / w; x = q % w;
        *a = (int32_t)((y + 1) * w + x); *b = (int32_t)(y * w + x);
        return;
    }
    q -= down;
    y = (q % diag) / (w - 1); x = (q % diag) % (w - 1);
    if (q < diag) {
        *a = (int32_t)((y + 1) * w + x + 1); *b = (int32_t)(y * w + x);
    } else {
        *a = (int32_t)(y * w + x + 1); *b = (int32_t)((y + 1) * w + x);
    }
}

/* Felzenszwalb-Huttenlocher on the 8-connected h x w grid: order[m] lists the edges by increasing weight (weights
   indexed by edge number, see edge_ends). Writes labels[h*w]; returns the number of regions (-1: out of memory). */
int64_t ss_felzenszwalb(int64_t h, int64_t w, int64_t m, const int64_t *order, const double *weights, double scale,
                        int64_t min_size, int64_t *labels) {
    int64_t n = h * w;
    int32_t *parent = malloc(sizeof(int32_t) * (n > 0 ? n : 1));
    int32_t *size = malloc(sizeof(int32_t) * (n > 0 ? n : 1));
    double *internal = malloc(sizeof(double) * (n > 0 ? n : 1));
    int32_t *ends = malloc(sizeof(int32_t) * 2 * (m > 0 ? m : 1));
    if (!parent || !size || !internal || !ends) { free(parent); free(size); free(internal); free(ends); return -1; }
    for (int64_t i = 0; i < n; i++) { parent[i] = (int32_t)i; size[i] = 1; internal[i] = 0.0; }
    for (int64_t e = 0; e < m; e++) {
        edge_ends(h, w, order[e], &ends[2 * e], &ends[2 * e + 1]);
        int32_t r0 = find_root(parent, ends[2 * e]), r1 = find_root(parent, ends[2 * e + 1]);
        if (r0 == r1) continue;
        float t0 = (float)(internal[r0] + scale / (double)size[r0]);
        float t1 = (float)(internal[r1] + scale / (double)size[r1]);
        float t = t1 < t0 ? t1 : t0;
        double weight = weights[order[e]];
        if (weight < (double)t) {
            int32_t root = r0 < r1 ? r0 : r1, other = r0 < r1 ? r1 : r0;
            parent[other] = root;
            size[root] = size[r0] + size[r1];
            internal[root] = weight;
        }
    }
    for (int64_t e = 0; e < m; e++) {
        int32_t r0 = find_root(parent, ends[2 * e]), r1 = find_root(parent, ends[2 * e + 1]);
        if (r0 == r1 || (size[r0] >= min_size && size[r1] >= min_size)) continue;
        int32_t root = r0 < r1 ? r0 : r1, other = r0 < r1 ? r1 : r0;
        parent[other] = root;
        size[root] = size[r0] + size[r1];
    }
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) size[i] = -1;  /* reused: the label of each root */
    for (int64_t i = 0; i < n; i++) {
        int32_t r = find_root(parent, (int32_t)i);
        if (size[r] < 0) size[r] = (int32_t)count++;
        labels[i] = size[r];
    }
    free(parent); free(size); free(internal); free(ends);
    return count;
}

/* Stable argsort of n finite non-negative doubles (their bit patterns order as unsigned integers): LSD radix sort,
   four passes of 16 bits, a pass skipped when every key has the same digit. Returns 0 (-1: out of memory). */
int64_t ss_argsort_f64(int64_t n, const double *values, int64_t *order) {
    const uint64_t *keys = (const uint64_t *)values;
    int64_t *tmp = malloc(sizeof(int64_t) * (n > 0 ? n : 1));
    int64_t *count = malloc(sizeof(int64_t) * 65536);
    if (!tmp || !count) { free(tmp); free(count); return -1; }
    for (int64_t i = 0; i < n; i++) order[i] = i;
    int64_t *src = order, *dst = tmp;
    for (int shift = 0; shift < 64; shift += 16) {
        memset(count, 0, sizeof(int64_t) * 65536);
        for (int64_t i = 0; i < n; i++) count[(keys[i] >> shift) & 0xFFFF]++;
        if (n == 0 || count[(keys[0] >> shift) & 0xFFFF] == n) continue;
        int64_t total = 0;
        for (int64_t d = 0; d < 65536; d++) { int64_t c = count[d]; count[d] = total; total += c; }
        for (int64_t i = 0; i < n; i++) { int64_t q = src[i]; dst[count[(keys[q] >> shift) & 0xFFFF]++] = q; }
        int64_t *swap = src; src = dst; dst = swap;
    }
    if (src != order) memcpy(order, src, sizeof(int64_t) * n);
    free(tmp); free(count);
    return 0;
}

/* ------------------------------------------------------------------ region statistics */

/* labels[h*w] in [0, r); codes[f*h*w]: row j holds every pixel's j-th histogram bin, in [0, bins). Writes size[r],
   boxes[r*4] (x1, y1, x2, y2; exclusive right and bottom) and counts[r*bins] (zeroed here). */
void ss_region_stats(int64_t h, int64_t w, const int64_t *labels, int64_t r, int64_t f, const int32_t *codes,
                     int64_t bins, int64_t *size, double *boxes, int64_t *counts) {
    memset(counts, 0, sizeof(int64_t) * r * bins);
    for (int64_t k = 0; k < r; k++) {
        size[k] = 0;
        boxes[4 * k] = (double)w; boxes[4 * k + 1] = (double)h; boxes[4 * k + 2] = 0.0; boxes[4 * k + 3] = 0.0;
    }
    for (int64_t y = 0; y < h; y++) {
        for (int64_t x = 0; x < w; x++) {
            int64_t p = y * w + x, k = labels[p];
            double *b = boxes + 4 * k;
            size[k]++;
            if (x < b[0]) b[0] = (double)x;
            if (y < b[1]) b[1] = (double)y;
            if (x + 1 > b[2]) b[2] = (double)(x + 1);
            if (y + 1 > b[3]) b[3] = (double)(y + 1);
            int64_t *c = counts + k * bins;
            for (int64_t j = 0; j < f; j++) c[codes[j * h * w + p]]++;
        }
    }
}

static int compare_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The unique pairs (i < j) of regions that touch horizontally or vertically, sorted; pairs has room for
   2*h*w*2 values. Returns the number of pairs (-1: out of memory). */
int64_t ss_adjacent_pairs(int64_t h, int64_t w, const int64_t *labels, int64_t r, int64_t *pairs) {
    int64_t cap = 2 * h * w, m = 0;
    int64_t *codes = malloc(sizeof(int64_t) * (cap > 0 ? cap : 1));
    if (!codes) return -1;
    for (int64_t y = 0; y < h; y++) {
        for (int64_t x = 0; x < w; x++) {
            int64_t a = labels[y * w + x];
            if (x + 1 < w) {
                int64_t b = labels[y * w + x + 1];
                if (a != b) codes[m++] = a < b ? a * r + b : b * r + a;
            }
            if (y + 1 < h) {
                int64_t b = labels[(y + 1) * w + x];
                if (a != b) codes[m++] = a < b ? a * r + b : b * r + a;
            }
        }
    }
    qsort(codes, (size_t)m, sizeof(int64_t), compare_i64);
    int64_t u = 0;
    for (int64_t k = 0; k < m; k++) {
        if (k > 0 && codes[k] == codes[k - 1]) continue;
        pairs[2 * u] = codes[k] / r;
        pairs[2 * u + 1] = codes[k] % r;
        u++;
    }
    free(codes);
    return u;
}

/* ------------------------------------------------------------------ hierarchical grouping */

typedef struct { double key; int64_t i, j; } Entry;  /* key = -similarity; ties: smaller i, then smaller j */

static int entry_less(const Entry *a, const Entry *b) {
    if (a->key != b->key) return a->key < b->key;
    if (a->i != b->i) return a->i < b->i;
    return a->j < b->j;
}

typedef struct { Entry *data; int64_t size, cap; } Heap;

static int heap_push(Heap *h, Entry e) {
    if (h->size == h->cap) {
        int64_t cap = h->cap ? 2 * h->cap : 64;
        Entry *data = realloc(h->data, sizeof(Entry) * cap);
        if (!data) return 0;
        h->data = data; h->cap = cap;
    }
    int64_t k = h->size++;
    while (k > 0) {
        int64_t parent = (k - 1) / 2;
        if (!entry_less(&e, &h->data[parent])) break;
        h->data[k] = h->data[parent];
        k = parent;
    }
    h->data[k] = e;
    return 1;
}

static Entry heap_pop(Heap *h) {
    Entry top = h->data[0], last = h->data[--h->size];
    int64_t k = 0;
    for (;;) {
        int64_t child = 2 * k + 1;
        if (child >= h->size) break;
        if (child + 1 < h->size && entry_less(&h->data[child + 1], &h->data[child])) child++;
        if (!entry_less(&h->data[child], &last)) break;
        h->data[k] = h->data[child];
        k = child;
    }
    if (h->size > 0) h->data[k] = last;
    return top;
}

typedef struct { int64_t *items; int64_t size, cap; } List;

static int list_push(List *l, int64_t v) {
    if (l->size == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 8;
        int64_t *items = realloc(l->items, sizeof(int64_t) * cap);
        if (!items) return 0;
        l->items = items; l->cap = cap;
    }
    l->items[l->size++] = v;
    return 1;
}

typedef struct {
    int64_t bins, colour_bins, colour_channels, texture_features, flags;
    double image_size;
    const int64_t *counts, *size;
    const double *boxes;
} Regions;

enum { USE_COLOUR = 1, USE_TEXTURE = 2, USE_SIZE = 4, USE_FILL = 8 };

/* sum_b min(c_i[b] s_j, c_j[b] s_i) / (channels s_i s_j): the intersection of the L1-normalised histograms */
static double intersection(const int64_t *ci, const int64_t *cj, int64_t lo, int64_t hi, int64_t si, int64_t sj,
                           int64_t channels) {
    int64_t num = 0;
    for (int64_t b = lo; b < hi; b++) {
        int64_t x = ci[b] * sj, y = cj[b] * si;
        num += x < y ? x : y;
    }
    return (double)num / (((double)channels * (double)si) * (double)sj);
}

static double similarity(const Regions *g, int64_t i, int64_t j) {
    const int64_t *ci = g->counts + i * g->bins, *cj = g->counts + j * g->bins;
    int64_t si = g->size[i], sj = g->size[j];
    double s = 0.0;
    if (g->flags & USE_COLOUR) s += intersection(ci, cj, 0, g->colour_bins, si, sj, g->colour_channels);
    if (g->flags & USE_TEXTURE) s += intersection(ci, cj, g->colour_bins, g->bins, si, sj, g->texture_features);
    if (g->flags & USE_SIZE) s += 1.0 - ((double)si + (double)sj) / g->image_size;
    if (g->flags & USE_FILL) {
        const double *a = g->boxes + 4 * i, *b = g->boxes + 4 * j;
        double bw = (a[2] > b[2] ? a[2] : b[2]) - (a[0] < b[0] ? a[0] : b[0]);
        double bh = (a[3] > b[3] ? a[3] : b[3]) - (a[1] < b[1] ? a[1] : b[1]);
        s += 1.0 - (bw * bh - (double)si - (double)sj) / g->image_size;
    }
    return s;
}

/* n initial regions: counts[n*bins] (the first colour_bins columns are colour), size[n], boxes[n*4]; p adjacent
   pairs (i < j). Writes the boxes of all regions in creation order to boxes_out[(2n-1)*4]; returns their number
   (-1: out of memory). */
int64_t ss_group(int64_t n, int64_t bins, int64_t colour_bins, int64_t colour_channels, int64_t texture_features,
                 const int64_t *counts0, const int64_t *size0, const double *boxes0, int64_t p, const int64_t *pairs,
                 int64_t flags, double image_size, double *boxes_out) {
    int64_t total = 2 * n - 1 > 0 ? 2 * n - 1 : 1, t = n, result = -1;
    int64_t *counts = malloc(sizeof(int64_t) * total * (bins > 0 ? bins : 1));
    int64_t *size = malloc(sizeof(int64_t) * total);
    int64_t *mark = malloc(sizeof(int64_t) * total);
    char *alive = calloc((size_t)total, 1);
    List *adj = calloc((size_t)total, sizeof(List));
    Heap heap = {0};
    Regions g = {bins, colour_bins, colour_channels, texture_features, flags, image_size, counts, size, boxes_out};
    if (!counts || !size || !mark || !alive || !adj) goto done;
    memcpy(counts, counts0, sizeof(int64_t) * n * bins);
    memcpy(size, size0, sizeof(int64_t) * n);
    memcpy(boxes_out, boxes0, sizeof(double) * n * 4);
    for (int64_t k = 0; k < total; k++) mark[k] = -1;
    for (int64_t k = 0; k < n; k++) alive[k] = 1;
    for (int64_t k = 0; k < p; k++) {
        int64_t i = pairs[2 * k], j = pairs[2 * k + 1];
        if (!list_push(&adj[i], j) || !list_push(&adj[j], i)) goto done;
        Entry e = {-similarity(&g, i, j), i, j};
        if (!heap_push(&heap, e)) goto done;
    }
    while (heap.size > 0) {
        Entry e = heap_pop(&heap);
        int64_t i = e.i, j = e.j;
        if (!alive[i] || !alive[j]) continue;  /* a stale pair: one of the two was merged already */
        size[t] = size[i] + size[j];
        const double *a = boxes_out + 4 * i, *b = boxes_out + 4 * j;
        double *c = boxes_out + 4 * t;
        c[0] = a[0] < b[0] ? a[0] : b[0];
        c[1] = a[1] < b[1] ? a[1] : b[1];
        c[2] = a[2] > b[2] ? a[2] : b[2];
        c[3] = a[3] > b[3] ? a[3] : b[3];
        for (int64_t k = 0; k < bins; k++) counts[t * bins + k] = counts[i * bins + k] + counts[j * bins + k];
        alive[i] = alive[j] = 0;
        alive[t] = 1;
        mark[i] = mark[j] = t;  /* so that neither joins the new list */
        for (int side = 0; side < 2; side++) {
            List *l = &adj[side ? j : i];
            for (int64_t k = 0; k < l->size; k++) {
                int64_t m = l->items[k];
                if (mark[m] == t) continue;
                mark[m] = t;
                if (!list_push(&adj[t], m)) goto done;
            }
        }
        for (int64_t k = 0; k < adj[t].size; k++) {
            int64_t m = adj[t].items[k], keep = 0;
            List *l = &adj[m];
            for (int64_t q = 0; q < l->size; q++)
                if (l->items[q] != i && l->items[q] != j) l->items[keep++] = l->items[q];
            l->size = keep;
            if (!list_push(l, t)) goto done;
            Entry f = {-similarity(&g, t, m), m, t};
            if (!heap_push(&heap, f)) goto done;
        }
        free(adj[i].items); free(adj[j].items);
        adj[i].items = adj[j].items = NULL;
        adj[i].size = adj[j].size = adj[i].cap = adj[j].cap = 0;
        t++;
    }
    result = t;
done:
    if (adj) for (int64_t k = 0; k < total; k++) free(adj[k].items);
    free(adj); free(heap.data); free(counts); free(size); free(mark); free(alive);
    return result;
}
