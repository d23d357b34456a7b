/* RoI pool on CPU: the first strict maximum of each bin (torchvision's bin arithmetic) and the backward scatter.
   Plain C99 without PyTorch headers, called through ctypes by convatlas/ops/kernels/roi_pool.py. */

#include <float.h>
#include <math.h>
#include <stdint.h>

#define DEFINE_ROI_POOL(SUFFIX, T, LOWEST)                                                                         \
void roi_pool_argmax_##SUFFIX(const T *input, int64_t channels, int64_t height, int64_t width, const T *rois,      \
                              int64_t k, int64_t ph_n, int64_t pw_n, double scale_d, int64_t *argmax,             \
                              T *output, int64_t *bounds) {                                                         \
    const T scale = (T)scale_d;                                                                                     \
    int64_t *hs = bounds, *he = bounds + ph_n, *ws = bounds + 2 * ph_n, *we = bounds + 2 * ph_n + pw_n;             \
    for (int64_t r = 0; r < k; r++) {                                                                               \
        const T *roi = rois + 5 * r;                                                                                \
        int64_t b = (int64_t)roi[0];                                                                                \
        int64_t sw = (int64_t)round(roi[1] * scale), sh = (int64_t)round(roi[2] * scale);                           \
        int64_t ew = (int64_t)round(roi[3] * scale), eh = (int64_t)round(roi[4] * scale);                           \
        int64_t rw = ew - sw + 1 > 1 ? ew - sw + 1 : 1, rh = eh - sh + 1 > 1 ? eh - sh + 1 : 1;                     \
        T bin_h = (T)rh / (T)ph_n, bin_w = (T)rw / (T)pw_n;                                                         \
        /* bin bounds once per box, torchvision's arithmetic in T */                                                \
        for (int64_t ph = 0; ph < ph_n; ph++) {                                                                     \
            int64_t lo = (int64_t)floor((T)ph * bin_h) + sh, hi = (int64_t)ceil((T)(ph + 1) * bin_h) + sh;          \
            hs[ph] = lo < 0 ? 0 : lo > height ? height : lo;                                                        \
            he[ph] = hi < 0 ? 0 : hi > height ? height : hi;                                                        \
        }                                                                                                           \
        for (int64_t pw = 0; pw < pw_n; pw++) {                                                                     \
            int64_t lo = (int64_t)floor((T)pw * bin_w) + sw, hi = (int64_t)ceil((T)(pw + 1) * bin_w) + sw;          \
            ws[pw] = lo < 0 ? 0 : lo > width ? width : lo;                                                          \
            we[pw] = hi < 0 ? 0 : hi > width ? width : hi;                                                          \
        }                                                                                                           \
        for (int64_t c = 0; c < channels; c++) {                                                                    \
            const T *plane = input + (b * channels + c) * height * width;                                          \
            int64_t *out = argmax + (r * channels + c) * ph_n * pw_n;                                               \
            T *val = output + (r * channels + c) * ph_n * pw_n;                                                     \
            for (int64_t ph = 0; ph < ph_n; ph++)                                                                   \
                for (int64_t pw = 0; pw < pw_n; pw++) {                                                             \
                    if (he[ph] <= hs[ph] || we[pw] <= ws[pw]) {                                                     \
                        out[ph * pw_n + pw] = -1;                                                                   \
                        val[ph * pw_n + pw] = 0;                                                                    \
                        continue;                                                                                   \
                    }                                                                                               \
                    T best = LOWEST;                                                                                \
                    int64_t arg = -2;                                                                               \
                    for (int64_t y = hs[ph]; y < he[ph]; y++) {                                                     \
                        const T *line = plane + y * width;                                                          \
                        for (int64_t x = ws[pw]; x < we[pw]; x++)                                                   \
                            if (line[x] > best) { best = line[x]; arg = y * width + x; }                            \
                    }                                                                                               \
                    out[ph * pw_n + pw] = arg;                                                                      \
                    val[ph * pw_n + pw] = best;                                                                     \
                }                                                                                                   \
        }                                                                                                           \
    }                                                                                                               \
}

DEFINE_ROI_POOL(f32, float, -FLT_MAX)
DEFINE_ROI_POOL(f64, double, -DBL_MAX)

/* Backward: each output gradient goes to its bin's argmax (none for argmax < 0). grad_in must be zeroed. */
#define DEFINE_ROI_POOL_BACKWARD(SUFFIX, T)                                                                        \
void roi_pool_backward_##SUFFIX(const T *grad_out, const int64_t *argmax, const int64_t *batch, int64_t k,         \
                                int64_t channels, int64_t bins, int64_t plane_size, T *grad_in) {                 \
    for (int64_t r = 0; r < k; r++)                                                                                 \
        for (int64_t c = 0; c < channels; c++) {                                                                    \
            T *plane = grad_in + (batch[r] * channels + c) * plane_size;                                            \
            const int64_t *arg = argmax + (r * channels + c) * bins;                                                \
            const T *g = grad_out + (r * channels + c) * bins;                                                      \
            for (int64_t i = 0; i < bins; i++)                                                                      \
                if (arg[i] >= 0) plane[arg[i]] += g[i];                                                             \
        }                                                                                                           \
}

DEFINE_ROI_POOL_BACKWARD(f32, float)
DEFINE_ROI_POOL_BACKWARD(f64, double)
