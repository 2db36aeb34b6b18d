// Products with weights as GGUF stores them, for few activation rows (decode): y (M, N) =
// x (M, K) W^T with int8_mm (Q8_0) or int4_mm (Q4_1), plus the weights' dequantization for the
// dense GEMM of prefill and big batches.
#include "common.h"
#include "kernels.h"

// ---- weights as GGUF stores them: int8 (Q8_0) and int4 (Q4_1) ------------------------------
// One set of loops for both formats (packed_mm<F>, rows_avx512<F>, vrows_avx512<F>); a format F
// gives its operand checks and the arithmetic on its weights:
//   tile<MB> / ref:   fp32 activations, four weight rows dequantized in registers (AVX-512) / plain C++
//   vtile<MB> / vref: activations in two int8 digits and integer dot products (AVX512-VNNI) / plain C++

template <typename W>
struct Packed {      // the operands of one product
  const float* x;    // (M, K) fp32 activations
  const float* xs;   // (M, K / 32) sums of x's groups of 32 (Q4_1's minimum term, plain loops only)
  int64_t M, K, gs;  // gs: weights per scale
  const W* w;        // the weights' bytes, N rows
  const uint16_t* s; // their fp16 scales (Q4_1: (scale, minimum) pairs)
  float* y;          // (M, N) fp32
  int64_t N;
};

// ---- int8 / int4 weights times activations in two int8 digits (AVX512-VNNI) --------------
// Widening every weight to fp32 makes the kernels above compute-bound (~0.25 / ~0.45 vector
// instructions per weight). Here each call first writes the activations as integers, per group
// of 32 with scale d = group max / 127: x = d * (q1 + q2 / 128), q1 = round(x / d) in -127..127
// and q2 = round(128 * (x / d - q1)) in -64..64 (ties to even), a 16-bit-precise fixed point in
// two bytes. vpdpbusd then multiplies 64 byte pairs and sums them in int32: one for each digit,
// 128 * dot(w, q1) + dot(w, q2) (~0.12 / ~0.1 instructions per weight): the kernels become
// bandwidth-bound. (llama.cpp keeps only q1; on SmolLM2 that 8-bit rounding of the activations
// triples the logits' KL divergence from fp32 for int8 weights and adds 0.02 nats for Q4_1.)
// vpdpbusd takes unsigned x signed bytes: Q4_1 nibbles are unsigned already; Q8_0 weights get
// 128 added (a sign-bit flip), and 128 * (128 * sum(q1) + sum(q2)) is subtracted again through
// the group's scales.
//
// Activation layout, per row, zero-padded to whole blocks of 16 groups (512 values):
//   int8: per chunk of 2 groups (64 values), the 64 q1 then the 64 q2; 16 lane scales d / 128
//         (8 per group); per group d * (128 * sum(q1) + sum(q2)) (the compensation).
//   int4: per chunk of 4 groups, for q1 then q2: the low halves (values 0-15 of each group,
//         matching the low nibbles of the weights' 16 bytes), then the high halves; 16 lane
//         scales (4 per group); per group the exact fp32 sum of its values (Q4_1's minimum term).

struct QAct {
  std::vector<int8_t> q;  // (M, 2 * Kp)
  std::vector<float> s;   // (M, S): 16 lane scales per chunk
  std::vector<float> c;   // (M, Gp)
  int64_t Kp, Gp, S;      // padded K, padded groups, lane scales per row
};

static bool vnni_on = true;

static bool has_vnni() {
  static const bool ok = has_avx512() && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
  return ok && vnni_on;
}

// fmt 1: int8 layout, fmt 2: int4 layout (see above). Called only where VNNI (so AVX-512) is.
__attribute__((target("avx512f,avx512bw,avx512vl")))
static QAct quantize_act(const float* x, int64_t M, int64_t K, int fmt) {
  QAct a;
  const int64_t G = K / 32;
  a.Gp = (G + 15) / 16 * 16; a.Kp = a.Gp * 32;
  const int64_t per_chunk = fmt == 1 ? 2 : 4;  // groups per 16 lane scales
  a.S = a.Gp / per_chunk * 16;
  a.q.assign(M * 2 * a.Kp, 0); a.s.assign(M * a.S, 0.f); a.c.assign(M * a.Gp, 0.f);
  constexpr int RND = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      const __m512 v[2] = {_mm512_loadu_ps(x + m * K + g * 32), _mm512_loadu_ps(x + m * K + g * 32 + 16)};
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
      const float d = amax / 127.f, id = d > 0.f ? 1.f / d : 0.f;
      int8_t* qrow = a.q.data() + m * 2 * a.Kp; float* srow = a.s.data() + m * a.S;
      const int64_t chunk = g / per_chunk, i = g % per_chunk;
      int32_t s1 = 0, s2 = 0;
      for (int h = 0; h < 2; ++h) {  // values 16h .. 16h + 15 of the group
        const __m512 t = _mm512_mul_ps(v[h], _mm512_set1_ps(id)), r = _mm512_roundscale_ps(t, RND);
        const __m512i q1 = _mm512_cvtps_epi32(r);
        const __m512i q2 = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(_mm512_sub_ps(t, r), _mm512_set1_ps(128.f)), RND));
        s1 += _mm512_reduce_add_epi32(q1); s2 += _mm512_reduce_add_epi32(q2);
        // where the 16 values go: int8 keeps the order; int4 puts them in the low / high half
        int8_t* o1 = fmt == 1 ? qrow + chunk * 128 + i * 32 + h * 16 : qrow + chunk * 256 + h * 64 + i * 16;
        int8_t* o2 = o1 + (fmt == 1 ? 64 : 128);
        _mm_storeu_si128((__m128i*)o1, _mm512_cvtepi32_epi8(q1));
        _mm_storeu_si128((__m128i*)o2, _mm512_cvtepi32_epi8(q2));
      }
      const int lanes = fmt == 1 ? 8 : 4;
      for (int l = 0; l < lanes; ++l) srow[chunk * 16 + i * lanes + l] = d / 128.f;
      a.c[m * a.Gp + g] = fmt == 1 ? d * (128.f * (float)s1 + (float)s2) : _mm512_reduce_add_ps(_mm512_add_ps(v[0], v[1]));
    }
  return a;
}

// int8 (Q8_0 layout): y[m, n] = sum_g d[n, g] * dot(x_g, q_g), groups of gs (16 | gs)
struct Q8 {
  using W = int8_t;
  static constexpr int act_layout = 1;      // quantize_act's int8 layout
  static constexpr bool group_sums = false;

  static Packed<W> operands(const at::Tensor& x, const at::Tensor& w, const at::Tensor& d);
  static bool vnni_layout(const Packed<W>& p) { return p.gs == 32; }  // the VNNI tiles take groups of 32
  static int64_t row_bytes(int64_t K) { return K; }

  // out of line: inlined into the AVX-512 loop (its last N % 4 rows), GCC would contract the
  // products into FMAs there and round those rows differently from this plain loop elsewhere
  __attribute__((noinline)) static void ref(const Packed<W>& p, int64_t n0, int64_t n1) {
    const float* x = p.x; const int8_t* w = p.w; const uint16_t* d = p.s; float* y = p.y;
    const int64_t M = p.M, K = p.K, gs = p.gs, N = p.N;
    const int64_t G = K / gs;
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t m = 0; m < M; ++m) {
        float acc = 0.f;
        for (int64_t g = 0; g < G; ++g) {
          const float* xg = x + m * K + g * gs; const int8_t* wg = w + n * K + g * gs; float dot = 0.f;
          for (int64_t k = 0; k < gs; ++k) dot += xg[k] * (float)wg[k];
          acc += h2f(d[n * G + g]) * dot;
        }
        y[m * N + n] = acc;
      }
  }

  // four weight rows at a time (four memory streams), dequantized in registers once and used
  // for MB activation rows (MB*4 accumulators)
  template <int MB>
  __attribute__((target("avx512f,avx512bw,fma,f16c")))
  static inline void tile(const Packed<W>& p, int64_t m0, int64_t n) {
    const float* x = p.x + m0 * p.K; const int8_t* w = p.w; const uint16_t* d = p.s; float* y = p.y + m0 * p.N;
    const int64_t K = p.K, gs = p.gs, N = p.N;
    const int64_t G = K / gs;
    const int8_t* wr[4] = {w + n * K, w + (n + 1) * K, w + (n + 2) * K, w + (n + 3) * K};
    __m512 acc[MB][4];
    for (int m = 0; m < MB; ++m) for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
      __m512 dv[4];
      for (int r = 0; r < 4; ++r) dv[r] = _mm512_set1_ps(_cvtsh_ss(d[(n + r) * G + g]));
      for (int64_t k = g * gs; k < (g + 1) * gs; k += 16) {
        __m512 wv[4];
        if ((k & 63) == 0) for (int r = 0; r < 4; ++r) pf(wr[r] + PFD * K + k);
        for (int r = 0; r < 4; ++r)
          wv[r] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(wr[r] + k)))), dv[r]);
        for (int m = 0; m < MB; ++m) {
          __m512 xv = _mm512_loadu_ps(x + m * K + k);
          for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_fmadd_ps(wv[r], xv, acc[m][r]);
        }
      }
    }
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < 4; ++r) y[m * N + n + r] = _mm512_reduce_add_ps(acc[m][r]);
  }

  // the same sums as vtile for the last N % 4 weight rows, one at a time (plain C++)
  static void vref(const QAct& a, const Packed<W>& p, int64_t n0, int64_t n1) {
    const int8_t* w = p.w; const uint16_t* d = p.s; float* y = p.y;
    const int64_t M = p.M, K = p.K, N = p.N;
    const int64_t G = K / 32;
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t m = 0; m < M; ++m) {
        float acc = 0.f;
        for (int64_t g = 0; g < G; ++g) {
          const int8_t* xq = a.q.data() + m * 2 * a.Kp + (g / 2) * 128 + (g % 2) * 32; int32_t dot = 0;
          for (int j = 0; j < 32; ++j) dot += (128 * (int32_t)xq[j] + xq[64 + j]) * (int32_t)w[n * K + g * 32 + j];
          acc += h2f(d[n * G + g]) * a.s[m * a.S + (g / 2) * 16 + (g % 2) * 8] * (float)dot;
        }
        y[m * N + n] = acc;
      }
  }

  template <int MB>
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")))
  static inline void vtile(const QAct& a, const Packed<W>& p, int64_t m0, int64_t n) {
    const int8_t* w = p.w; const uint16_t* d = p.s; float* y = p.y;
    const int64_t K = p.K, N = p.N;
    const int64_t G = K / 32;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const __m512i half = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512 acc[MB][4];
    for (int m = 0; m < MB; ++m) for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < G; g0 += 16) {
      const int64_t ng = std::min<int64_t>(16, G - g0);
      const __mmask16 dmask = (__mmask16)((1u << ng) - 1);
      __m512 dv[4];
      for (int r = 0; r < 4; ++r) {
        pf(d + (n + r + PFD) * G + g0);
        dv[r] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(dmask, d + (n + r) * G + g0));
      }
      for (int m = 0; m < MB; ++m) {  // the compensation for the +128 on the weights
        const __m512 cv = _mm512_loadu_ps(a.c.data() + (m0 + m) * a.Gp + g0);
        for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_fnmadd_ps(dv[r], cv, acc[m][r]);
      }
      for (int64_t c = 0; 2 * c < ng; ++c) {
        const int64_t k = (g0 + 2 * c) * 32;
        const __mmask64 wmask = 2 * c + 1 < ng ? ~0ULL : 0xFFFFFFFFULL;
        const __m512i idx = _mm512_add_epi32(half, _mm512_set1_epi32((int)(2 * c)));
        __m512i wv[4]; __m512 sv[4];
        for (int r = 0; r < 4; ++r) {
          const int8_t* wp = w + (n + r) * K + k;
          pf(wp + PFD * K);
          wv[r] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(wmask, wp), flip);
          sv[r] = _mm512_permutexvar_ps(idx, dv[r]);
        }
        for (int m = 0; m < MB; ++m) {
          const int8_t* xq = a.q.data() + (m0 + m) * 2 * a.Kp + 2 * k;
          const __m512i x1 = _mm512_loadu_si512((const void*)xq), x2 = _mm512_loadu_si512((const void*)(xq + 64));
          const __m512 xs = _mm512_loadu_ps(a.s.data() + (m0 + m) * a.S + (g0 / 2 + c) * 16);
          for (int r = 0; r < 4; ++r) {
            const __m512i hi = _mm512_slli_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[r], x1), 7);
            const __m512i dot = _mm512_dpbusd_epi32(hi, wv[r], x2);
            acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(sv[r], xs), acc[m][r]);
          }
        }
      }
    }
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < 4; ++r) y[(m0 + m) * N + n + r] = _mm512_reduce_add_ps(acc[m][r]);
  }
};

// int4 (Q4_1 layout): y[m, n] = sum_g d[n,g] * dot(x_g, q_g) + m[n,g] * sum(x_g)
struct Q4 {
  using W = uint8_t;
  static constexpr int act_layout = 2;      // quantize_act's int4 layout
  static constexpr bool group_sums = true;  // the plain loop takes the minimum term from sums of x

  static Packed<W> operands(const at::Tensor& x, const at::Tensor& w, const at::Tensor& dm);
  static bool vnni_layout(const Packed<W>&) { return true; }
  static int64_t row_bytes(int64_t K) { return K / 2; }

  __attribute__((noinline)) static void ref(const Packed<W>& p, int64_t n0, int64_t n1) {  // (as Q8::ref)
    const float* x = p.x; const float* xs = p.xs; const uint8_t* w = p.w; const uint16_t* dm = p.s; float* y = p.y;
    const int64_t M = p.M, K = p.K, N = p.N;
    const int64_t G = K / 32;
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t m = 0; m < M; ++m) {
        float acc = 0.f;
        for (int64_t g = 0; g < G; ++g) {
          const uint8_t* b = w + (n * G + g) * 16; const float* xg = x + m * K + g * 32; float dot = 0.f;
          for (int j = 0; j < 16; ++j) dot += xg[j] * (float)(b[j] & 15) + xg[j + 16] * (float)(b[j] >> 4);
          acc += h2f(dm[(n * G + g) * 2]) * dot + h2f(dm[(n * G + g) * 2 + 1]) * xs[m * G + g];
        }
        y[m * N + n] = acc;
      }
  }

  // four weight rows at a time, dequantized in registers (q * d + m) and used for MB activation rows
  template <int MB>
  __attribute__((target("avx512f,avx512bw,fma,f16c")))
  static inline void tile(const Packed<W>& p, int64_t m0, int64_t n) {
    const float* x = p.x + m0 * p.K; const uint8_t* w = p.w; const uint16_t* dm = p.s; float* y = p.y + m0 * p.N;
    const int64_t K = p.K, N = p.N;
    const int64_t G = K / 32;
    const __m128i lo4 = _mm_set1_epi8(15);
    __m512 acc[MB][4];
    for (int m = 0; m < MB; ++m) for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
      __m512 wl[4], wh[4];
      for (int r = 0; r < 4; ++r) {
        const int64_t row = (n + r) * G + g;
        if ((g & 3) == 0) pf(w + (row + PFD * G) * 16);
        __m128i b = _mm_loadu_si128((const __m128i*)(w + row * 16));
        __m512 d = _mm512_set1_ps(_cvtsh_ss(dm[row * 2])), mn = _mm512_set1_ps(_cvtsh_ss(dm[row * 2 + 1]));
        wl[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b, lo4))), d, mn);
        wh[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), lo4))), d, mn);
      }
      for (int m = 0; m < MB; ++m) {
        __m512 xl = _mm512_loadu_ps(x + m * K + g * 32), xh = _mm512_loadu_ps(x + m * K + g * 32 + 16);
        for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_fmadd_ps(wh[r], xh, _mm512_fmadd_ps(wl[r], xl, acc[m][r]));
      }
    }
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < 4; ++r) y[m * N + n + r] = _mm512_reduce_add_ps(acc[m][r]);
  }

  static void vref(const QAct& a, const Packed<W>& p, int64_t n0, int64_t n1) {
    const uint8_t* w = p.w; const uint16_t* dm = p.s; float* y = p.y;
    const int64_t M = p.M, K = p.K, N = p.N;
    const int64_t G = K / 32;
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t m = 0; m < M; ++m) {
        float acc = 0.f;
        for (int64_t g = 0; g < G; ++g) {
          const int8_t* xq = a.q.data() + m * 2 * a.Kp + (g / 4) * 256 + (g % 4) * 16;
          const uint8_t* b = w + (n * G + g) * 16; int32_t dot = 0;
          for (int j = 0; j < 16; ++j)
            dot += (int32_t)(b[j] & 15) * (128 * xq[j] + xq[128 + j]) + (int32_t)(b[j] >> 4) * (128 * xq[64 + j] + xq[192 + j]);
          acc += h2f(dm[(n * G + g) * 2]) * a.s[m * a.S + (g / 4) * 16 + (g % 4) * 4] * (float)dot
               + h2f(dm[(n * G + g) * 2 + 1]) * a.c[m * a.Gp + g];
        }
        y[m * N + n] = acc;
      }
  }

  template <int MB>
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")))
  static inline void vtile(const QAct& a, const Packed<W>& p, int64_t m0, int64_t n) {
    const uint8_t* w = p.w; const uint16_t* dm = p.s; float* y = p.y;
    const int64_t K = p.K, N = p.N;
    const int64_t G = K / 32;
    const __m512i lo4 = _mm512_set1_epi8(15);
    const __m512i quarter = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    __m512 acc[MB][4];
    for (int m = 0; m < MB; ++m) for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < G; g0 += 16) {
      const int64_t ng = std::min<int64_t>(16, G - g0);
      const __mmask32 pmask = ng == 16 ? ~0u : (__mmask32)((1u << (2 * ng)) - 1);
      __m512 dv[4];
      for (int r = 0; r < 4; ++r) {  // (scale, min) of 16 groups -> scales in dv, minimum term now
        pf(dm + ((n + r + PFD) * G + g0) * 2);
        const __m512i raw = _mm512_maskz_loadu_epi16(pmask, dm + ((n + r) * G + g0) * 2);
        const __m512 p0 = _mm512_cvtph_ps(_mm512_castsi512_si256(raw)), p1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(raw, 1));
        dv[r] = _mm512_permutex2var_ps(p0, even, p1);
        const __m512 mv = _mm512_permutex2var_ps(p0, odd, p1);
        for (int m = 0; m < MB; ++m)
          acc[m][r] = _mm512_fmadd_ps(mv, _mm512_loadu_ps(a.c.data() + (m0 + m) * a.Gp + g0), acc[m][r]);
      }
      for (int64_t c = 0; 4 * c < ng; ++c) {
        const int64_t g = g0 + 4 * c, left = std::min<int64_t>(4, ng - 4 * c);
        const __mmask64 wmask = left == 4 ? ~0ULL : ((1ULL << (16 * left)) - 1);
        const __m512i idx = _mm512_add_epi32(quarter, _mm512_set1_epi32((int)(4 * c)));
        __m512i wl[4], wh[4]; __m512 sv[4];
        for (int r = 0; r < 4; ++r) {
          const uint8_t* wp = w + ((n + r) * G + g) * 16;
          pf(wp + PFD * G * 16);
          const __m512i b = _mm512_maskz_loadu_epi8(wmask, wp);
          wl[r] = _mm512_and_si512(b, lo4);
          wh[r] = _mm512_and_si512(_mm512_srli_epi16(b, 4), lo4);
          sv[r] = _mm512_permutexvar_ps(idx, dv[r]);
        }
        for (int m = 0; m < MB; ++m) {
          const int8_t* xq = a.q.data() + (m0 + m) * 2 * a.Kp + g * 64;
          const __m512i x1l = _mm512_loadu_si512((const void*)xq), x1h = _mm512_loadu_si512((const void*)(xq + 64));
          const __m512i x2l = _mm512_loadu_si512((const void*)(xq + 128)), x2h = _mm512_loadu_si512((const void*)(xq + 192));
          const __m512 xs = _mm512_loadu_ps(a.s.data() + (m0 + m) * a.S + (g / 4) * 16);
          for (int r = 0; r < 4; ++r) {
            __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wl[r], x1l), wh[r], x1h);
            dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_slli_epi32(dot, 7), wl[r], x2l), wh[r], x2h);
            acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(sv[r], xs), acc[m][r]);
          }
        }
      }
    }
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < 4; ++r) y[(m0 + m) * N + n + r] = _mm512_reduce_add_ps(acc[m][r]);
  }
};

// the rows n0..n1 of one product, by four-row tiles, then the plain loop for the last N % 4
template <class F>
__attribute__((target("avx512f,avx512bw,fma,f16c")))
static void rows_avx512(const Packed<typename F::W>& p, int64_t n0, int64_t n1) {
  const int64_t M = p.M;
#define ONE(B) F::template tile<B>(p, m, n)
  TILED_ROWS(ONE, F::ref(p, n, n1));
#undef ONE
}

template <class F>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")))
static void vrows_avx512(const QAct& a, const Packed<typename F::W>& p, int64_t n0, int64_t n1) {
  const int64_t M = p.M;
#define ONE(B) F::template vtile<B>(a, p, m, n)
  TILED_ROWS(ONE, F::vref(a, p, n, n1));
#undef ONE
}

bool int8_activations(int64_t mode) {  // mode 0 / 1 turns the VNNI path off / on; < 0 asks
  if (mode >= 0) vnni_on = mode != 0;
  return has_vnni();
}


Packed<int8_t> Q8::operands(const at::Tensor& x, const at::Tensor& w, const at::Tensor& d) {
  // w (N, K) int8; d (N, K/gs) fp16 scales, gs a multiple of 16
  const int64_t M = x.size(0), K = w.size(1), N = w.size(0);
  check_x(x, K);
  TORCH_CHECK(w.scalar_type() == at::kChar && w.is_contiguous());
  TORCH_CHECK(d.scalar_type() == at::kHalf && d.is_contiguous() && d.dim() == 2 && d.size(0) == N);
  const int64_t gs = K / d.size(1);
  TORCH_CHECK(gs * d.size(1) == K && gs % 16 == 0, "int8 group size must divide K and be a multiple of 16");
  return {x.data_ptr<float>(), nullptr, M, K, gs, w.data_ptr<int8_t>(), reinterpret_cast<const uint16_t*>(d.data_ptr<at::Half>()),
          nullptr, N};
}

Packed<uint8_t> Q4::operands(const at::Tensor& x, const at::Tensor& w, const at::Tensor& dm) {
  // w (N, K/2) uint8 in Q4_1 order; dm (N, K/32, 2) fp16 (scale, min)
  const int64_t M = x.size(0), N = w.size(0), K = w.size(1) * 2, G = K / 32;
  check_x(x, K);
  TORCH_CHECK(K % 32 == 0 && w.scalar_type() == at::kByte && w.is_contiguous());
  TORCH_CHECK(dm.scalar_type() == at::kHalf && dm.is_contiguous() && dm.numel() == N * G * 2);
  return {x.data_ptr<float>(), nullptr, M, K, 32, w.data_ptr<uint8_t>(), reinterpret_cast<const uint16_t*>(dm.data_ptr<at::Half>()),
          nullptr, N};
}

template <class F>
static at::Tensor packed_mm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s) {
  Packed<typename F::W> p = F::operands(x, w, s);
  const int64_t M = p.M, K = p.K, N = p.N;
  const bool fast = has_avx512(), vnni = F::vnni_layout(p) && has_vnni();
  // (M, G) group sums for the minimum term of Q4_1's plain loop (the AVX-512 tiles dequantize
  // instead, but hand the last N % 4 rows to the plain loop)
  at::Tensor xs;
  if (F::group_sums && !vnni) {
    xs = x.view({M, K / 32, 32}).sum(-1).contiguous();
    p.xs = xs.data_ptr<float>();
  }
  auto y = at::empty({M, N}, x.options());
  p.y = y.data_ptr<float>();
  // chunks of rows: a multiple of 4, about 64 KiB of weights each
  const int64_t grain = std::max<int64_t>(4, ((65536 / std::max<int64_t>(F::row_bytes(K), 1)) + 3) & ~int64_t(3));
  if (vnni) {
    const QAct a = quantize_act(p.x, M, K, F::act_layout);
    at::parallel_for(0, (N + 3) / 4, std::max<int64_t>(1, grain / 4), [&](int64_t b, int64_t e) {
      vrows_avx512<F>(a, p, b * 4, std::min(N, e * 4));
    });
    return y;
  }
  at::parallel_for(0, (N + 3) / 4, std::max<int64_t>(1, grain / 4), [&](int64_t b, int64_t e) {
    const int64_t n0 = b * 4, n1 = std::min(N, e * 4);
    if (fast) rows_avx512<F>(p, n0, n1); else F::ref(p, n0, n1);
  });
  return y;
}

at::Tensor int8_mm(at::Tensor x, at::Tensor w, at::Tensor d) { return packed_mm<Q8>(x, w, d); }
at::Tensor int4_mm(at::Tensor x, at::Tensor w, at::Tensor dm) { return packed_mm<Q4>(x, w, dm); }

// ---- dequantization to fp32 (N, K), for the dense GEMM of prefill / big batches ----------

at::Tensor int8_dequant(at::Tensor w, at::Tensor d) {
  const int64_t N = w.size(0), K = w.size(1), G = d.size(1), gs = K / G;
  TORCH_CHECK(w.scalar_type() == at::kChar && w.is_contiguous() && d.scalar_type() == at::kHalf && d.is_contiguous());
  auto out = at::empty({N, K}, w.options().dtype(at::kFloat));
  const int8_t* wp = w.data_ptr<int8_t>(); const uint16_t* dp = reinterpret_cast<const uint16_t*>(d.data_ptr<at::Half>());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N * G, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float sc = h2f(dp[i]);
      for (int64_t k = 0; k < gs; ++k) op[i * gs + k] = sc * (float)wp[i * gs + k];
    }
  });
  return out;
}

at::Tensor int4_dequant(at::Tensor w, at::Tensor dm) {
  const int64_t N = w.size(0), K = w.size(1) * 2, G = K / 32;
  TORCH_CHECK(w.scalar_type() == at::kByte && w.is_contiguous() && dm.scalar_type() == at::kHalf && dm.is_contiguous());
  auto out = at::empty({N, K}, w.options().dtype(at::kFloat));
  const uint8_t* wp = w.data_ptr<uint8_t>(); const uint16_t* dp = reinterpret_cast<const uint16_t*>(dm.data_ptr<at::Half>());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N * G, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float sc = h2f(dp[2 * i]), mn = h2f(dp[2 * i + 1]);
      for (int j = 0; j < 16; ++j) {
        op[i * 32 + j] = sc * (float)(wp[i * 16 + j] & 15) + mn;
        op[i * 32 + j + 16] = sc * (float)(wp[i * 16 + j] >> 4) + mn;
      }
    }
  });
  return out;
}
