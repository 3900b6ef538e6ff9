/* Band ratio bounds on the CPU in float32: kl, tv and chi2 in one pass over the tokens.
 *
 * Compiled when bandpo is installed (setup.py) into the extension module bandpo._cpu_kernels and
 * loaded with ctypes by bandpo/cpu_kernels.py (see there for why this file exists). Portable C11
 * with GCC/Clang vector extensions. Each block handles BLOCK_VECTORS vectors side by side, so the
 * long dependency chains of the kl solver (exp -> log -> divide, per Halley step) overlap in the
 * out-of-order core instead of waiting on each other.
 *
 * The build is portable (no -march=native). The kernels are compiled once per instruction set, each
 * on vectors of its own register width (a vector wider than the registers compiles to scalar
 * comparisons and lane shuffles, several times slower): this file includes itself once per variant,
 * with BANDPO_VARIANT, TARGET, LANES and BLOCK_VECTORS set (the second half of the file). On x86-64 with GCC
 * or Clang the variants are AVX-512F (16 lanes), AVX2 with FMA (8 lanes) and the x86-64 baseline
 * (SSE2, 4 lanes), and every call runs the widest one the CPU and the operating system support
 * (bandpo_instruction_sets). Elsewhere only the baseline variant is built, for the target's default
 * instructions (4 lanes: NEON, or whatever the compiler makes of them). The variants differ in
 * rounding only by fused multiply-adds (-ffp-contract=fast).
 *
 * The formulas are those of bandpo/divergences.py. e^y, e^y - 1 and log(1 + z) are evaluated with
 * range reduction and polynomials fitted for this file instead of libm's expf, expm1f and log1pf,
 * which do not vectorise; each is documented where it is defined (what it replaces, its reduced
 * interval, its error measured against the float64 libm function over every float32 argument).
 * tests/test_cpu_kernels.py checks the bounds against float64 eager ones, and
 * tests/test_divergences.py against a 50-digit reference.
 */
#ifndef BANDPO_VARIANT /* ------------------------------ the library: everything but the kernels */

#ifdef BANDPO_PYTHON_EXTENSION /* setup.py; Python.h comes before the standard headers */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif
#include <float.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__)
/* The vector helpers are always inlined: no vector crosses a call, whatever registers it needs. */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f      /* ln 2 = LN2_HI + LN2_LO, LN2_HI with 9 significant bits */
#define LN2_LO -2.12194440e-4f
#define ROUND_SHIFT 12582912.0f  /* 1.5 * 2^23: adding it rounds a float to an integer */
#define LOWEST_NORMAL -87.33f    /* e^y >= FLT_MIN */
#define LOWEST_SUBNORMAL -104.0f /* e^y rounds to 0 below */

enum { KL = 0, TV = 1, CHI2 = 2 };

/* Instruction sets, numbered as the `isa` argument of bandpo_band_f32 and the bits of
 * bandpo_instruction_sets (names in bandpo/cpu_kernels.py, INSTRUCTION_SETS). */
enum { BASELINE = 0, X86_AVX2_FMA = 1, X86_AVX512F = 2, INSTRUCTION_SET_COUNT = 3 };

/* Runtime dispatch: GCC >= 6 and Clang >= 6 on x86-64 (target attributes, __builtin_cpu_supports,
 * which also checks that the operating system saves the wider registers). Anything else, or
 * -DBANDPO_NO_DISPATCH, builds the baseline variant only. */
#if defined(__x86_64__) && !defined(BANDPO_NO_DISPATCH) &&                                            \
    ((defined(__clang__) && __clang_major__ >= 6) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 6))
#define X86_DISPATCH 1
#endif

/* The bounds of log_p[0 .. n), one function per variant. */
typedef void bounds_range_fn(int divergence, const float *log_p, float *lower, float *upper, int64_t n,
                             float delta, float upper_max, int kl_steps);

#define PART_GRAIN 64 /* tokens: the threads' parts start at multiples of every variant's block */

#define VARIANT_NAME(name, variant) VARIANT_NAME_(name, variant)
#define VARIANT_NAME_(name, variant) name##_##variant

/* The variants (#include by the file's name: a quoted include is looked up next to the including
 * file first). */
#define BANDPO_VARIANT baseline
#define TARGET
#define LANES 4
#define BLOCK_VECTORS 4
#include "cpu_kernels.c"

#ifdef X86_DISPATCH
#define BANDPO_VARIANT avx2_fma
#define TARGET __attribute__((target("avx2,fma")))
#define LANES 8
#define BLOCK_VECTORS 4
#include "cpu_kernels.c"

#define BANDPO_VARIANT avx512f
#define TARGET __attribute__((target("avx512f,avx2,fma")))
#define LANES 16
#define BLOCK_VECTORS 2
#include "cpu_kernels.c"
#endif

/* Bit i set: this build has instruction set i and the CPU runs it. */
int bandpo_instruction_sets(void) {
    int sets = 1 << BASELINE;
#ifdef X86_DISPATCH
    __builtin_cpu_init();
    int avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2_fma) sets |= 1 << X86_AVX2_FMA;
    if (avx2_fma && __builtin_cpu_supports("avx512f")) sets |= 1 << X86_AVX512F;
#endif
    return sets;
}

static bounds_range_fn *bounds_range_for(int isa) {
    int sets = bandpo_instruction_sets();
    if (isa < 0) /* the widest */
        for (isa = INSTRUCTION_SET_COUNT - 1; !(sets >> isa & 1); isa--) continue;
    if (isa >= INSTRUCTION_SET_COUNT || !(sets >> isa & 1)) return 0;
    switch (isa) {
#ifdef X86_DISPATCH
    case X86_AVX512F: return bounds_range_avx512f;
    case X86_AVX2_FMA: return bounds_range_avx2_fma;
#endif
    default: return bounds_range_baseline;
    }
}

#ifndef BANDPO_SOURCE_SHA256
#define BANDPO_SOURCE_SHA256 "" /* setup.py defines it */
#endif
/* SHA-256 of this file as it was built (setup.py), so that bandpo/cpu_kernels.py can tell a stale
 * in-place build from a current one. */
const char *bandpo_source_sha256(void) { return BANDPO_SOURCE_SHA256; }

/* Whether this build runs its blocks on an OpenMP thread pool. */
int bandpo_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* Entry point: returns 0, -1 for an unknown divergence, -2 for a kl step count other than 2 or 3
 * (bandpo.divergences.kl_halley_steps, the one source of the count), or -3 for an instruction set
 * this build or CPU lacks (isa < 0: the widest available). Built with OpenMP, the tokens are split
 * into `threads` contiguous parts run by threads of the process's OpenMP pool (PyTorch's own, when
 * the loader finds its libgomp already loaded), so the kernel never competes with idle-spinning
 * PyTorch workers; without OpenMP, the parts run one after the other on the calling thread. */
int bandpo_band_f32(int divergence, const float *log_p, float *lower, float *upper, int64_t n,
                    float delta, float upper_max, int kl_steps, int threads, int isa) {
    if (divergence < KL || divergence > CHI2) return -1;
    if (divergence == KL && kl_steps != 2 && kl_steps != 3) return -2;
    bounds_range_fn *bounds_range = bounds_range_for(isa);
    if (!bounds_range) return -3;
    int parts = threads > 1 ? threads : 1;
    int64_t grains = (n + PART_GRAIN - 1) / PART_GRAIN;
#ifdef _OPENMP
    #pragma omp parallel for num_threads(parts) schedule(static, 1) if (parts > 1)
#endif
    for (int part = 0; part < parts; part++) {
        int64_t first = grains * part / parts * PART_GRAIN, last = grains * (part + 1) / parts * PART_GRAIN;
        if (last > n) last = n;
        if (first < last)
            bounds_range(divergence, log_p + first, lower + first, upper + first, last - first, delta,
                         upper_max, kl_steps);
    }
    return 0;
}

#ifdef BANDPO_PYTHON_EXTENSION
/* An empty module, so that the library is an ordinary extension module of the bandpo package
 * (named and placed by setuptools, found by importlib); bandpo/cpu_kernels.py loads it with ctypes. */
static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "bandpo._cpu_kernels",
    .m_doc = "The C kernels of bandpo.cpu_kernels (called through ctypes; no Python functions).",
    .m_size = -1,
};
PyMODINIT_FUNC PyInit__cpu_kernels(void) { return PyModule_Create(&module); }
#endif

#else /* ------------------- one variant of the kernels: vectors of LANES floats, for TARGET */

/* Every name of a variant gets its suffix: bounds_range_avx2_fma, splat_avx2_fma, ... */
#define vf VARIANT_NAME(vf, BANDPO_VARIANT)
#define vi VARIANT_NAME(vi, BANDPO_VARIANT)
#define vf_unaligned VARIANT_NAME(vf_unaligned, BANDPO_VARIANT)
#define splat VARIANT_NAME(splat, BANDPO_VARIANT)
#define pick VARIANT_NAME(pick, BANDPO_VARIANT)
#define min_v VARIANT_NAME(min_v, BANDPO_VARIANT)
#define max_v VARIANT_NAME(max_v, BANDPO_VARIANT)
#define sqrt_v VARIANT_NAME(sqrt_v, BANDPO_VARIANT)
#define expm1_reduced VARIANT_NAME(expm1_reduced, BANDPO_VARIANT)
#define exp_and_expm1 VARIANT_NAME(exp_and_expm1, BANDPO_VARIANT)
#define expm1_nonnegative VARIANT_NAME(expm1_nonnegative, BANDPO_VARIANT)
#define log_reduced VARIANT_NAME(log_reduced, BANDPO_VARIANT)
#define reduce_log_argument VARIANT_NAME(reduce_log_argument, BANDPO_VARIANT)
#define log1p_nonnegative VARIANT_NAME(log1p_nonnegative, BANDPO_VARIANT)
#define kl_shrink VARIANT_NAME(kl_shrink, BANDPO_VARIANT)
#define kl_block VARIANT_NAME(kl_block, BANDPO_VARIANT)
#define tv_block VARIANT_NAME(tv_block, BANDPO_VARIANT)
#define chi2_block VARIANT_NAME(chi2_block, BANDPO_VARIANT)
#define bounds_block VARIANT_NAME(bounds_block, BANDPO_VARIANT)

#define BLOCK (LANES * BLOCK_VECTORS)
#define SHRINKS (2 * BLOCK_VECTORS)
_Static_assert(PART_GRAIN % BLOCK == 0, "a thread's part must start on a block");
#define INLINE static inline __attribute__((always_inline)) TARGET
#define EACH(j, count) _Pragma("GCC unroll 16") for (int j = 0; j < (count); j++)

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));
/* for loads and stores of LANES floats at any float-aligned address */
typedef float vf_unaligned __attribute__((vector_size(4 * LANES), aligned(4), may_alias));

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

/* The polynomial of every exponential below (in place of libm's expf / expm1f).
 * Range reduction (Cody-Waite): y = k ln 2 + r with k = round(y / ln 2) (adding ROUND_SHIFT rounds
 * to an integer) and r = (y - k LN2_HI) - k LN2_LO, where k LN2_HI is exact for |k| < 2^15; then
 * |r| <= ln(2) / 2 (|y| <= 104 here). On that interval
 *     e^r - 1 = r + r^2 (1/2 + r P(r)),   P of degree 4 (P(r) ~ 1/6 + r/24 + ...),
 * a least-squares fit for this file (degree 7 in all). Its error, measured against float64
 * expm1 over every float32 r in [-ln 2 / 2, ln 2 / 2]: 0.70 ulp with FMA, 0.82 ulp without. */
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

/* (e^y, e^y - 1):  e^y = 2^k e^r,  e^y - 1 = (2^k - 1) + 2^k (e^r - 1), the scale 2^k built from the
 * exponent bits. Replaces torch.exp and torch.expm1 of bandpo's PyTorch path: p = e^(log p) and
 * 1 - p = -expm1(log p) of bandpo.shrink.two_sided_bounds, and kl_shrink's e^-u and w = -expm1(-u)
 * (bandpo.divergences.kl_shrink). Measured against float64 exp / expm1 over every float32 y in
 * [-87.33, 89]: e^y within 0.99 ulp and e^y - 1 within 1.44 ulp with FMA (0.96 and 1.48 without);
 * subnormal e^y (y in [-104, -87.33], LOWEST_SUBNORMAL) within 0.75 units of 2^-149.
 * Below y = lowest, e^y is 0 and e^y - 1 is -1: with lowest = LOWEST_NORMAL no subnormal number is
 * formed (arithmetic on those takes a microcode path about 100x slower); with LOWEST_SUBNORMAL,
 * 2^k is applied as 2^(k/2) 2^(k - k/2) so that subnormal results keep their precision. Above
 * y = 88.7, e^y is +inf (e^y - 1 is +inf from y = 88.4 on). */
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

/* e^y - 1 for 0 <= y <= 88, +inf above (where it only feeds products that overflow anyway).
 * Replaces exp(-log(p) / 2) - 1, i.e. t - 1 with t = p^(-1/2), of tv_bounds and two_sided_bounds
 * (and chi2's g, below). Error as exp_and_expm1's e^y - 1: 1.44 ulp with FMA, 1.48 without. */
INLINE vf expm1_nonnegative(vf y) {
    vi k_int;
    vf expm1_r = expm1_reduced(min_v(y, splat(88.0f)), &k_int);
    vf scale = (vf)((k_int + 127) << 23);
    return pick(y > 88.0f, splat(__builtin_inff()), (scale - 1.0f) + scale * expm1_r);
}

/* k ln 2 + log(1 + f), the polynomial of log1p_nonnegative (in place of libm's log1pf), for f in
 * [sqrt(1/2) - 1, sqrt(2) - 1) (reduce_log_argument):
 *     log(1 + f) = f - f^2 / 2 + f^3 Q(f),   Q of degree 7 (Q(f) ~ 1/3 - f/4 + f^2/5 - ...),
 * a least-squares fit for this file; k ln 2 is added in two parts (LN2_HI, LN2_LO) as in the
 * exponential. Error of log(1 + f) against float64 log1p over every float32 f in the interval:
 * 1.08 ulp, with or without FMA. */
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

/* log(1 + z) for z >= 0 (1 + z < 2^127): with y = 1 + z rounded and c = z - (y - 1) its rounding
 * error (exact up to y = 2^24; past it, c / y is below the rounding of the result),
 *     log(1 + z) = log(y + c) = k ln 2 + log(1 + f + c 2^-k).
 * Replaces torch.log1p in kl_shrink's F(u) = a u - b log1p(a w / b) - delta. Error against float64
 * log1p over every float32 z in [0, FLT_MAX]: 1.50 ulp with FMA, 1.49 without. */
INLINE vf log1p_nonnegative(vf z) {
    vf y = 1.0f + z;
    vf c = z - (y - 1.0f);
    vi k_int;
    vf f = reduce_log_argument(y, &k_int);
    return log_reduced(__builtin_convertvector(k_int, vf), f + c * (vf)((127 - k_int) << 23));
}

/* Forward-KL shrink problems (bandpo.divergences.kl_shrink), SHRINKS = 2 * BLOCK_VECTORS at once:
 *     F(u) = a u - b log(1 + a w / b) - delta = 0,   s = e^-u,  w = 1 - s,  m = b + a w,
 * from u = max(sqrt(2 b delta / a) + delta (1 + a) / (3 a), delta / a), with Halley's step in the
 * form with one division:
 *     u <- u - 2 F w m / (2 a w^2 - F b e^-u). */
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

/* bounds_range_fn for this variant: whole blocks in place, the last, partial one through
 * zero-padded buffers. Never inlined: its caller is compiled for the baseline instructions. */
TARGET __attribute__((noinline)) static void VARIANT_NAME(bounds_range, BANDPO_VARIANT)(
    int divergence, const float *log_p, float *lower, float *upper, int64_t n, float delta,
    float upper_max, int kl_steps) {
    int64_t full = n / BLOCK * BLOCK;
    for (int64_t i = 0; i < full; i += BLOCK)
        bounds_block(divergence, log_p + i, lower + i, upper + i, delta, upper_max, kl_steps);
    if (full < n) {
        float in[BLOCK] = {0}, lower_rest[BLOCK], upper_rest[BLOCK];
        memcpy(in, log_p + full, (n - full) * sizeof(float));
        bounds_block(divergence, in, lower_rest, upper_rest, delta, upper_max, kl_steps);
        memcpy(lower + full, lower_rest, (n - full) * sizeof(float));
        memcpy(upper + full, upper_rest, (n - full) * sizeof(float));
    }
}

#undef vf
#undef vi
#undef vf_unaligned
#undef splat
#undef pick
#undef min_v
#undef max_v
#undef sqrt_v
#undef expm1_reduced
#undef exp_and_expm1
#undef expm1_nonnegative
#undef log_reduced
#undef reduce_log_argument
#undef log1p_nonnegative
#undef kl_shrink
#undef kl_block
#undef tv_block
#undef chi2_block
#undef bounds_block
#undef BLOCK
#undef SHRINKS
#undef INLINE
#undef EACH
#undef BANDPO_VARIANT
#undef TARGET
#undef LANES
#undef BLOCK_VECTORS
#endif
