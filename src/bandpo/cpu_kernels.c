/* Band ratio bounds on the CPU in float32: kl, tv and chi2 in one pass over the tokens.
 *
 * Built and loaded by bandpo/cpu_kernels.py (see there for why this file exists). Portable C11
 * with GCC/Clang vector extensions: a vector of 16 floats maps to one AVX-512 register, two AVX2
 * registers or four NEON registers. Each block handles BLOCK_VECTORS vectors side by side, so the
 * long dependency chains of the kl solver (exp -> log -> divide, per Halley step) overlap in the
 * out-of-order core instead of waiting on each other.
 *
 * The formulas are those of bandpo/divergences.py; e^y and log x are evaluated here with
 * Cody-Waite range reduction and least-squares polynomials fitted for this file (relative error
 * below 1e-7 in float32, tests/test_cpu_kernels.py).
 */
#include <float.h>
#include <stdint.h>
#include <string.h>

#define LANES 16
#define BLOCK_VECTORS 2
#define BLOCK (LANES * BLOCK_VECTORS)

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));
/* for loads and stores of LANES floats at any float-aligned address */
typedef float vf_unaligned __attribute__((vector_size(4 * LANES), aligned(4), may_alias));
#define INLINE static inline __attribute__((always_inline))
#define EACH(j, count) _Pragma("GCC unroll 16") for (int j = 0; j < (count); j++)

INLINE vf splat(float x) { return (vf){0} + x; }
/* lanes of a where mask is set, of b elsewhere (comparisons give all-ones / zero lanes) */
INLINE vf pick(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }
/* min and max that keep a NaN in their first argument, so NaN inputs give NaN bounds */
INLINE vf min_v(vf a, vf b) { return pick(a > b, b, a); }
INLINE vf max_v(vf a, vf b) { return pick(a < b, b, a); }
INLINE vf sqrt_v(vf x) {
    vf root = x;
    for (int i = 0; i < LANES; i++) root[i] = __builtin_sqrtf(x[i]);
    return root;
}

#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f      /* ln 2 = LN2_HI + LN2_LO, LN2_HI with 9 significant bits */
#define LN2_LO -2.12194440e-4f
#define ROUND_SHIFT 12582912.0f  /* 1.5 * 2^23: adding it rounds a float to an integer */

/* e^r - 1 for y = k ln 2 + r, |r| <= ln(2) / 2 (|y| <= 104):  e^r - 1 = r + r^2 (1/2 + r P(r)) */
INLINE vf expm1_reduced(vf y, vi *k_int) {
    vf shifted = y * LOG2E + ROUND_SHIFT;
    vf k = shifted - ROUND_SHIFT;
    *k_int = (vi)shifted - (vi)splat(ROUND_SHIFT);
    vf r = (y - k * LN2_HI) - k * LN2_LO;
    vf poly = r * 0.00019890983132953363f + 0.0013926178609874591f;
    poly = poly * r + 0.008333310931730573f;
    poly = poly * r + 0.04166655463962168f;
    poly = poly * r + 0.1666666668161834f;
    return r + r * r * (0.5f + r * poly);
}

/* (e^y, e^y - 1), both to a few ulps:  e^y = 2^k e^r,  e^y - 1 = (2^k - 1) + 2^k (e^r - 1).
 * Below y = lowest, e^y is 0 and e^y - 1 is -1: with lowest = LOWEST_NORMAL no subnormal number is
 * formed (arithmetic on those takes a microcode path about 100x slower); with LOWEST_SUBNORMAL,
 * 2^k is applied as 2^(k/2) 2^(k - k/2) so that subnormal results keep their precision. Above
 * y = 88.7, e^y is +inf (e^y - 1 is +inf from y = 88.4 on). */
#define LOWEST_NORMAL -87.33f   /* e^y >= FLT_MIN */
#define LOWEST_SUBNORMAL -104.0f /* e^y rounds to 0 below */
INLINE void exp_and_expm1(vf y, const float lowest, vf *exp_y, vf *expm1_y) {
    vi k_int;
    vf expm1_r = expm1_reduced(min_v(max_v(y, splat(lowest)), splat(89.0f)), &k_int);
    vi k_half = k_int >> 1;
    vf scale_a = (vf)((k_half + 127) << 23), scale_b = (vf)((k_int - k_half + 127) << 23);
    vf scale = scale_a * scale_b;
    vi inside = ~(y < lowest); /* NaN stays NaN */
    *exp_y = (vf)((vi)((scale_a + scale_a * expm1_r) * scale_b) & inside);
    *expm1_y = pick(inside, (scale - 1.0f) + scale * expm1_r, splat(-1.0f));
}

/* e^y - 1 for 0 <= y <= 88, +inf above */
INLINE vf expm1_nonnegative(vf y) {
    vi k_int;
    vf expm1_r = expm1_reduced(min_v(y, splat(88.0f)), &k_int);
    vf scale = (vf)((k_int + 127) << 23);
    return pick(y > 88.0f, splat(__builtin_inff()), (scale - 1.0f) + scale * expm1_r);
}

/* k ln 2 + log(1 + f) for f in about [sqrt(1/2) - 1, sqrt(2) - 1):  f - f^2 / 2 + f^3 Q(f) */
INLINE vf log_reduced(vf k, vf f) {
    vf poly = f * -0.08101558333421245f + 0.1271230767781246f;
    poly = poly * f - 0.1297223898896245f;
    poly = poly * f + 0.1420217382217867f;
    poly = poly * f - 0.16642247595904205f;
    poly = poly * f + 0.20001468576920645f;
    poly = poly * f - 0.2500029654603983f;
    poly = poly * f + 0.3333332859677578f;
    vf f2 = f * f;
    return f + ((f2 * f * poly + k * LN2_LO) - 0.5f * f2) + k * LN2_HI;
}

/* f with x = 2^k (1 + f), 1 + f in [sqrt(1/2), sqrt(2)), for normal positive x */
INLINE vf reduce_log_argument(vf x, vi *k_int) {
    vi bits = (vi)x + (0x3f800000 - 0x3f3504f3); /* moves the mantissa cut from 1 to sqrt(1/2) */
    *k_int = (bits >> 23) - 127;
    return (vf)((bits & 0x007fffff) + 0x3f3504f3) - 1.0f;
}

/* log x for normal positive x */
INLINE vf log_normal(vf x) {
    vi k_int;
    vf f = reduce_log_argument(x, &k_int);
    return log_reduced(__builtin_convertvector(k_int, vf), f);
}

/* log(1 + z) for z >= 0 (1 + z < 2^127): with y = 1 + z rounded and c = z - (y - 1) its rounding
 * error (exact up to y = 2^24; past it, c / y is below the rounding of the result),
 *     log(1 + z) = log(y + c) = k ln 2 + log(1 + f + c 2^-k). */
INLINE vf log1p_nonnegative(vf z) {
    vf y = 1.0f + z;
    vf c = z - (y - 1.0f);
    vi k_int;
    vf f = reduce_log_argument(y, &k_int);
    return log_reduced(__builtin_convertvector(k_int, vf), f + c * (vf)((127 - k_int) << 23));
}

/* Forward-KL shrink problems (bandpo.divergences.kl_shrink), 2 * BLOCK_VECTORS of them at once:
 *     F(u) = a u - b log(1 + a w / b) - delta = 0,   s = e^-u,  w = 1 - s,  m = b + a w,
 * from u = max(sqrt(2 b delta / a) + delta (1 + a) / (3 a), delta / a), with Halley's step in the
 * form with one division:
 *     u <- u - 2 F w m / (2 a w^2 - F b e^-u). */
#define SHRINKS (2 * BLOCK_VECTORS)
INLINE void kl_shrink(vf *a, const vf *b, float delta, const int steps, vf *s, vf *w) {
    vf inv_b[SHRINKS], u[SHRINKS];
    EACH(j, SHRINKS) {
        a[j] = max_v(a[j], splat(1.0842022e-19f)); /* sqrt(FLT_MIN): keeps delta / a finite */
        inv_b[j] = 1.0f / max_v(b[j], splat(FLT_MIN)); /* keeps a w / b finite */
        vf inv_a = 1.0f / a[j];
        vf series = sqrt_v(2.0f * delta * b[j] * inv_a) + (delta / 3.0f) * (inv_a + 1.0f);
        u[j] = max_v(series, delta * inv_a);
    }
    _Pragma("GCC unroll 4") for (int step = 0; step < steps; step++) {
        vf e[SHRINKS], expm1_neg_u[SHRINKS], log1p_z[SHRINKS];
        /* e^-u below e^-40 changes nothing in b + a w */
        EACH(j, SHRINKS) exp_and_expm1(-min_v(u[j], splat(40.0f)), LOWEST_NORMAL, &e[j], &expm1_neg_u[j]);
        EACH(j, SHRINKS) log1p_z[j] = log1p_nonnegative(a[j] * -expm1_neg_u[j] * inv_b[j]);
        EACH(j, SHRINKS) {
            vf w_j = -expm1_neg_u[j], m = b[j] + a[j] * w_j;
            vf f = a[j] * u[j] - b[j] * log1p_z[j] - delta;
            u[j] -= 2.0f * f * w_j * m / (2.0f * a[j] * w_j * w_j - f * b[j] * e[j]);
        }
    }
    EACH(j, SHRINKS) {
        exp_and_expm1(-u[j], LOWEST_NORMAL, &s[j], &w[j]);
        w[j] = -w[j];
    }
}

/* lower = s*(p), upper = 1 + (1 - p) w*(1 - p) t t with t = p^(-1/2), which keeps its precision
 * where p is subnormal (bandpo.shrink.two_sided_bounds) */
INLINE void kl_block(const vf *log_p, vf *lower, vf *upper, float delta, const int steps) {
    vf a[SHRINKS], b[SHRINKS], s[SHRINKS], w[SHRINKS];
    EACH(j, BLOCK_VECTORS) {
        vf p, expm1_log_p;
        exp_and_expm1(log_p[j], LOWEST_SUBNORMAL, &p, &expm1_log_p);
        vf complement = -expm1_log_p;
        a[j] = p, b[j] = complement;
        a[BLOCK_VECTORS + j] = complement, b[BLOCK_VECTORS + j] = p;
    }
    kl_shrink(a, b, delta, steps, s, w);
    EACH(j, BLOCK_VECTORS) {
        vf t = expm1_nonnegative(-0.5f * log_p[j]) + 1.0f;
        lower[j] = s[j];
        upper[j] = 1.0f + ((max_v(w[BLOCK_VECTORS + j], splat(FLT_MIN)) * b[j]) * t) * t;
    }
}

/* total variation: r = 1 -/+ delta / p inside [0, 1/p] (bandpo.divergences.tv_bounds). With
 * t = p^(-1/2), which never overflows, 1 / p = t t and delta / p = (delta t) t overflow only where
 * their values do, and both are exact at p = 1. */
INLINE void tv_block(const vf *log_p, vf *lower, vf *upper, float delta) {
    EACH(j, BLOCK_VECTORS) {
        vf t = expm1_nonnegative(-0.5f * log_p[j]) + 1.0f;
        vf reach = (delta * t) * t;
        lower[j] = max_v(1.0f - reach, splat(0.0f));
        upper[j] = min_v(1.0f + reach, t * t);
    }
}

/* Pearson chi-square: r = 1 -/+ sqrt(delta (1 - p) / p) inside [0, 1/p]. With g = p^(-1/2) - 1
 * (accurate near p = 1), (1 - p) / p = g (g + 2) and the reach is sqrt(delta) sqrt(g (g + 2)).
 * Past p^(-1/2) = e^41.5 (> 2^59) the reach is sqrt(delta / p) to float precision and below 1 / p;
 * it is formed as t^2 with t = delta^(1/4) e^(-log(p) / 4), which overflows only where the reach
 * does (p^(-1/2) itself overflows while sqrt(delta / p) is still finite; bandpo.divergences.chi2_bounds). */
INLINE void chi2_block(const vf *log_p, vf *lower, vf *upper, float delta) {
    EACH(j, BLOCK_VECTORS) {
        vf y = -0.5f * log_p[j];
        vi far = y > 41.5f;
        vf g = expm1_nonnegative(pick(far, 0.5f * y, y));
        vf t = (g + 1.0f) * __builtin_sqrtf(__builtin_sqrtf(delta));
        vf odds = g * (g + 2.0f); /* 1 / p - 1 (near p = 1) */
        vf reach = pick(far, t * t, sqrt_v(odds) * __builtin_sqrtf(delta));
        lower[j] = max_v(1.0f - reach, splat(0.0f));
        upper[j] = 1.0f + pick(far, reach, min_v(reach, odds));
    }
}

enum { KL = 0, TV = 1, CHI2 = 2 };

/* One block of BLOCK tokens: log p > 0 reads as 0, the upper bound is capped at upper_max, and
 * NaN gives NaN bounds (carried through every step by min_v, max_v and exp_and_expm1). */
INLINE void bounds_block(int divergence, const float *in, float *lower_out, float *upper_out,
                         float delta, float upper_max, int kl_steps) {
    vf log_p[BLOCK_VECTORS], lower[BLOCK_VECTORS], upper[BLOCK_VECTORS];
    EACH(j, BLOCK_VECTORS) log_p[j] = min_v(*(const vf_unaligned *)(in + j * LANES), splat(0.0f));
    switch (divergence) {
    case KL: /* a constant step count unrolls the Halley loop */
        if (kl_steps == 2) kl_block(log_p, lower, upper, delta, 2);
        else kl_block(log_p, lower, upper, delta, 3);
        break;
    case TV: tv_block(log_p, lower, upper, delta); break;
    default: chi2_block(log_p, lower, upper, delta); break;
    }
    EACH(j, BLOCK_VECTORS) {
        *(vf_unaligned *)(lower_out + j * LANES) = lower[j];
        *(vf_unaligned *)(upper_out + j * LANES) = min_v(upper[j], splat(upper_max));
    }
}

/* Entry point: returns 0, -1 for an unknown divergence, or -2 for a kl step count other than 2 or 3
 * (bandpo.divergences.kl_halley_steps). Built with OpenMP, the blocks are shared
 * among `threads` threads of the process's OpenMP pool (PyTorch's own, when the loader finds its
 * libgomp already loaded), so the kernel never competes with idle-spinning PyTorch workers. */
int bandpo_band_f32(int divergence, const float *log_p, float *lower, float *upper, long n,
                    float delta, float upper_max, int kl_steps, int threads) {
    if (divergence < KL || divergence > CHI2) return -1;
    if (divergence == KL && kl_steps != 2 && kl_steps != 3) return -2;
    long full = n / BLOCK * BLOCK;
    #pragma omp parallel for num_threads(threads > 1 ? threads : 1) schedule(static) if (threads > 1)
    for (long i = 0; i < full; i += BLOCK)
        bounds_block(divergence, log_p + i, lower + i, upper + i, delta, upper_max, kl_steps);
    if (full < n) { /* the last, partial block goes through zero-padded buffers */
        float in[BLOCK] = {0}, lower_rest[BLOCK], upper_rest[BLOCK];
        memcpy(in, log_p + full, (n - full) * sizeof(float));
        bounds_block(divergence, in, lower_rest, upper_rest, delta, upper_max, kl_steps);
        memcpy(lower + full, lower_rest, (n - full) * sizeof(float));
        memcpy(upper + full, upper_rest, (n - full) * sizeof(float));
    }
    return 0;
}
