/* ln(w) for normal w > 0 in float, relative error ~1e-7, inline so that loops vectorize
 * without a library call: w = 2^ex (1 + t), t in [sqrt(1/2) - 1, sqrt(2) - 1),
 * ln(1 + t) = t - t^2/2 + t^3 P(t), P fitted (least squares, relative, Chebyshev nodes)
 * on that interval. One definition for analog_tiles.c and crossing.c (through
 * crossing_math.h); labkit.model.native hashes it with every source that includes it. */
#ifndef LABKIT_LN_POLY_H
#define LABKIT_LN_POLY_H

#include <string.h>

/* P(t) by Horner, for a float or a vector of floats (GCC vector extensions) */
#define LN_POLY(t)                                                                          \
    ((((((0.0850695372f * (t) - 0.141974717f) * (t) + 0.149509788f) * (t) - 0.165879488f) * \
        (t) + 0.199605972f) * (t) - 0.250009686f) * (t) + 0.333339721f)

static inline float ln_poly_f32(float t) { return LN_POLY(t); }

static inline float ln_pos_f32(float w)
{
    int bits;
    memcpy(&bits, &w, sizeof bits);
    int ex = (bits >> 23) - 127;
    bits = (bits & 0x007fffff) | 0x3f800000;
    float f;
    memcpy(&f, &bits, sizeof f);
    int big = f > 1.41421356f;
    f = big ? 0.5f * f : f;
    ex += big;
    float t = f - 1.0f, t2 = t * t;
    return t2 * t * ln_poly_f32(t) - 0.5f * t2 + t + (float)ex * 0.693147181f;
}

#endif
