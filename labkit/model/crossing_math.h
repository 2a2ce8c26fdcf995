/* The element-wise math of the fused crossing (crossing.c), inlining labkit/model/equations.py:
 * ln(1 + y) / y of the droop (ln1p_ratio; float from a polynomial, relative error ~1e-7,
 * double from libm), the droop gradient's curvature (curv_series, curv_fix), the lane
 * selects and masks (SEL, all_set) and the per-type names of libm's exp, rint, floor.
 * Included by crossing.c inside its no-trapping-math options (so these compile as
 * they did in one file); hashed with it by labkit.model.native. */
#ifndef LABKIT_CROSSING_MATH_H
#define LABKIT_CROSSING_MATH_H

#include "slot_walk.h" /* the vector types */
#include "ln_poly.h"   /* ln_poly_f32, ln_pos_f32 */

/* ln(1 + y) / y (1 at y = 0), the droop compression of equations.droop_charge. float:
   inside [sqrt(1/2) - 1, sqrt(2) - 1) the series on y itself, 1 - y/2 + y^2 P(y) (no
   rounding of 1 + y, no 0/0), else ln(1 + y) / y; relative error ~1e-7, branch-free (the
   loop vectorizes). double: libm log1p. */
static inline float ln1p_ratio_f32(float y)
{
    float small = 1.0f - 0.5f * y + y * y * ln_poly_f32(y);
    float big = ln_pos_f32(1.0f + y) / y;
    return (y >= -0.292893219f && y < 0.414213562f) ? small : big;
}

static inline double ln1p_ratio_f64(double y) { return y == 0 ? 1.0 : log1p(y) / y; }

/* (ln(1 + y) - y / (1 + y)) / y^2, the droop gradient's curvature (equations._log1p_curv):
   float: the series sum_n (-1)^n (n + 1) / (n + 2) y^n to y^7 below |y| = 0.1 (Horner, as
   there), mended to the closed form in double above; double: the closed form (1/2 at
   y = 0). */
static inline float curv_fix_f32(float y, float series)
{
    if (fabsf(y) < 0.1f) return series;
    double v = y;
    return (float)((log1p(v) - v / (1.0 + v)) / (v * v));
}

static inline double curv_fix_f64(double y, double series)
{
    (void)series;
    double p = (log1p(y) - y / (1.0 + y)) / (y * y);
    return p != p ? 0.5 : p;
}

#define CURV_SERIES_f32 curv_series_vf32
#define CURV_SERIES_f64 curv_series_vf64
#define LN1P_RATIO_f32 ln1p_ratio_vf32
#define LN1P_RATIO_f64 ln1p_ratio_vf64
#define CURV_FIX_f32 curv_fix_f32
#define CURV_FIX_f64 curv_fix_f64

/* The same on vectors of lanes (vector extensions: the loops do not vectorize by
   themselves). sel: the lanes of a where m is set, else of b. */
#define SEL(V, VI, m, a, b) ((V)(((VI)(a) & (m)) | ((VI)(b) & ~(m))))

/* True if every lane of a mask is set (a tree of ANDs: no lane-by-lane extraction). */
#define DEFINE_ALL_SET(SUF)                                                                 \
static inline int all_set_##SUF(vi_##SUF m)                                                 \
{                                                                                           \
    for (int w = L_##SUF / 2; w >= 1; w /= 2)                                               \
        for (int l = 0; l < w; ++l) m[l] &= m[l + w];                                       \
    return m[0] != 0;                                                                       \
}

/* ln(1 + y) / y on float vectors of type SUF (the scalar ln1p_ratio_f32 per lane). */
#define DEFINE_LN1P_RATIO_V(SUF)                                                            \
static inline v_##SUF ln_poly_v##SUF(v_##SUF t) { return LN_POLY(t); } /* ln_poly.h */      \
                                                                                            \
static inline v_##SUF ln1p_ratio_v##SUF(v_##SUF y)                                          \
{                                                                                           \
    typedef v_##SUF V;                                                                      \
    typedef vi_##SUF VI;                                                                    \
    const V small = 1.0f - 0.5f * y + y * y * ln_poly_v##SUF(y);                            \
    const VI inside = (y >= -0.292893219f) & (y < 0.414213562f);                            \
    if (all_set_##SUF(inside)) return small; /* (a droop below 40 %: every lane on a chip) */ \
    const V w = 1.0f + y;                                                                   \
    VI bits = (VI)w;                                                                        \
    VI ex = (bits >> 23) - 127;                                                             \
    bits = (bits & 0x007fffff) | 0x3f800000;                                                \
    V f = (V)bits;                                                                          \
    const VI big = f > 1.41421356f;                                                         \
    f = SEL(V, VI, big, 0.5f * f, f);                                                       \
    ex -= big; /* big lanes are -1 */                                                       \
    const V t = f - 1.0f, t2 = t * t;                                                       \
    const V ln = t2 * t * ln_poly_v##SUF(t) - 0.5f * t2 + t + __builtin_convertvector(ex, V) * 0.693147181f; \
    return SEL(V, VI, inside, small, ln / y);                                               \
}

DEFINE_ALL_SET(f32)
DEFINE_ALL_SET(f64)
DEFINE_LN1P_RATIO_V(f32)
#define ALL_SET_f32 all_set_f32
#define ALL_SET_f64 all_set_f64
#if defined(__AVX512F__)
DEFINE_ALL_SET(f32w)
DEFINE_LN1P_RATIO_V(f32w)
#define LN1P_RATIO_f32w ln1p_ratio_vf32w
#define FLOOR_f32w floorf
#endif

static inline v_f64 ln1p_ratio_vf64(v_f64 y)
{
    v_f64 r;
    for (int l = 0; l < L_f64; ++l) r[l] = ln1p_ratio_f64(y[l]);
    return r;
}

static inline v_f32 curv_series_vf32(v_f32 y)
{
    v_f32 p = (float)(-8.0 / 9.0) + y * 0;
    p = (float)(7.0 / 8.0) + p * y;
    p = (float)(-6.0 / 7.0) + p * y;
    p = (float)(5.0 / 6.0) + p * y;
    p = (float)(-4.0 / 5.0) + p * y;
    p = (float)(3.0 / 4.0) + p * y;
    p = (float)(-2.0 / 3.0) + p * y;
    return (float)(1.0 / 2.0) + p * y;
}

static inline v_f64 curv_series_vf64(v_f64 y) { return y * 0; }

#define EXP_f32 expf
#define EXP_f64 exp
#define RINT_f32 rintf
#define RINT_f64 rint
#define FLOOR_f32 floorf
#define FLOOR_f64 floor

#endif
