/* Bit-line integration of a batch of VMMs with the second-order array physics
 * (simulator/chip.py, VirtualChip.integrate: the same equations, one sample at a time).
 *
 * Per sample: rows sorted by conduction time (stable); between two falling edges the
 * active set is constant and the bit lines follow
 *     dV/dt = -Minv (s(I_tot) I(V) + I_leak),
 *     I_j(V) = P_j(u) exp(eta_j u) (1 - exp(-V_j / U_T)),  u = V_j - V_D0,
 * P_j a cubic in u (the per-cell drain spread as a Taylor series), s the source-line
 * factor s = exp(-y s), y = a R I_tot; RK4 with n_sub steps per slot; each falling edge
 * steps every bit line by frac * step_v[row]. Built by labkit.native (cc -O3 -march=native -ffast-math: vectorized exp).
 */
#include <math.h>
#include <string.h>

#define MAXR 64
#define MAXC 64

static void rate(int C, const double *v, const double *c, const double *eta, double v0, double ut, int droop,
                 const double *leak, const double *minv_t, const double *cap, double src_r, double src_a,
                 double *out)
{
    double i[MAXC];
    double tot = 0.0;
    for (int j = 0; j < C; j++) {
        double u = v[j] - v0;
        double p = c[j] + u * (c[C + j] + u * (c[2 * C + j] + u * c[3 * C + j]));
        double vv = v[j] > 0.0 ? v[j] : 0.0;
        /* 1 - exp(-V/U_T) rather than expm1: vectorizes (libmvec); exact to 1e-16 for V > 0.01 V */
        i[j] = droop ? p * (exp(eta[j] * u) * (1.0 - exp(-vv / ut))) : p;
    }
    for (int j = 0; j < C; j++) tot += i[j];
    if (src_r > 0.0) {
        double y = src_a * src_r * tot, s = 1.0 / (1.0 + y);
        for (int it = 0; it < 2; it++) {
            double e = exp(-y * s);
            s -= (s - e) / (1.0 + y * e);
        }
        for (int j = 0; j < C; j++) i[j] *= s;
    }
    for (int j = 0; j < C; j++) i[j] += leak[j];
    if (minv_t) {
        for (int j = 0; j < C; j++) out[j] = 0.0;
        for (int k = 0; k < C; k++) {
            double ik = i[k];
            const double *row = minv_t + (long)k * C;
            for (int j = 0; j < C; j++) out[j] -= ik * row[j];
        }
    } else {
        for (int j = 0; j < C; j++) out[j] = -i[j] / cap[j];
    }
}

/* v: (B, C) initial voltages in, final out. d: (B, R) conduction times (s). frac: (B, R)
 * falling-edge level fractions or NULL (1). m: (R, 4C) Taylor matrix. step_v: (R, C) or
 * NULL (no crosstalk). minv_t: (C, C) or NULL (then cap). src_r <= 0: no source line.
 * Returns 0, or -1 for sizes beyond MAXR/MAXC. */
int integrate_batch(int B, int R, int C, double *v, const double *d, const double *frac, double T, int n_sub,
                    const double *m, const double *eta, double v0, double ut, int droop, const double *leak,
                    const double *minv_t, const double *cap, const double *step_v, double src_r, double src_a)
{
    if (R > MAXR || C > MAXC || R < 1 || C < 1) return -1;
    double suffix[(R + 1) * 4 * C];
    int order[MAXR];
    double ds[MAXR];
    for (int b = 0; b < B; b++) {
        double *vb = v + (long)b * C;
        const double *db = d + (long)b * R;
        /* stable insertion sort of the rows by conduction time */
        for (int r = 0; r < R; r++) {
            int k = r;
            while (k > 0 && db[order[k - 1]] > db[r]) {
                order[k] = order[k - 1];
                k--;
            }
            order[k] = r;
        }
        for (int k = 0; k < R; k++) ds[k] = db[order[k]];
        /* suffix[k] = sum of the Taylor rows of the rows still conducting in slot k */
        memset(suffix + (long)R * 4 * C, 0, sizeof(double) * 4 * C);
        for (int k = R - 1; k >= 0; k--) {
            const double *mr = m + (long)order[k] * 4 * C;
            double *dst = suffix + (long)k * 4 * C, *src = suffix + (long)(k + 1) * 4 * C;
            for (int q = 0; q < 4 * C; q++) dst[q] = src[q] + mr[q];
        }
        double k1[MAXC], k2[MAXC], k3[MAXC], k4[MAXC], tmp[MAXC];
        double start = 0.0;
        for (int k = 0; k <= R; k++) {
            double end = k < R ? ds[k] : T;
            double h = (end - start) / n_sub;
            const double *c = suffix + (long)k * 4 * C;
            for (int s = 0; s < n_sub; s++) {
                rate(C, vb, c, eta, v0, ut, droop, leak, minv_t, cap, src_r, src_a, k1);
                for (int j = 0; j < C; j++) tmp[j] = vb[j] + 0.5 * h * k1[j];
                rate(C, tmp, c, eta, v0, ut, droop, leak, minv_t, cap, src_r, src_a, k2);
                for (int j = 0; j < C; j++) tmp[j] = vb[j] + 0.5 * h * k2[j];
                rate(C, tmp, c, eta, v0, ut, droop, leak, minv_t, cap, src_r, src_a, k3);
                for (int j = 0; j < C; j++) tmp[j] = vb[j] + h * k3[j];
                rate(C, tmp, c, eta, v0, ut, droop, leak, minv_t, cap, src_r, src_a, k4);
                for (int j = 0; j < C; j++) {
                    double x = vb[j] + h / 6.0 * (k1[j] + 2 * k2[j] + 2 * k3[j] + k4[j]);
                    vb[j] = x > 0.0 ? x : 0.0;
                }
            }
            if (k < R && step_v && ds[k] > 0.0) {
                int row = order[k];
                double f = frac ? frac[(long)b * R + row] : 1.0;
                const double *sv = step_v + (long)row * C;
                for (int j = 0; j < C; j++) {
                    double x = vb[j] - f * sv[j];
                    vb[j] = x > 0.0 ? x : 0.0;
                }
            }
            start = end;
        }
    }
    return 0;
}
