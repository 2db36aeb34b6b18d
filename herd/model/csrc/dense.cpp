// Products with fp32 / bf16 weights for few activation rows (decode): y (M, N) = x (M, K) W^T.
#include "common.h"
#include "kernels.h"

// ---- fp32 / bf16 weights: y[m, n] = sum_k x[m, k] * w[n, k] ---------------------------------
// (the library GEMV reached ~12 GB/s on the benchmark's AMD CPU, a third of its bandwidth)

template <typename T>
static void f_rows_ref(const float* x, int64_t M, int64_t K, const T* w, float* y, int64_t N, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += x[m * K + k] * to_f<T>(w[n * K + k]);
      y[m * N + n] = acc;
    }
}

template <int MB, typename T>
__attribute__((target("avx512f,avx512bw,fma")))
static inline void f_tile(const float* x, int64_t K, const T* w, float* y, int64_t N, int64_t n) {
  const int64_t K16 = K & ~int64_t(15);
  const T* wr[4] = {w + n * K, w + (n + 1) * K, w + (n + 2) * K, w + (n + 3) * K};
  __m512 acc[MB][4];
  for (int m = 0; m < MB; ++m) for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K16; k += 16) {
    __m512 wv[4];
    for (int r = 0; r < 4; ++r) pf(wr[r] + PFD * K + k);
    for (int r = 0; r < 4; ++r) wv[r] = load16(wr[r] + k);
    for (int m = 0; m < MB; ++m) {
      __m512 xv = _mm512_loadu_ps(x + m * K + k);
      for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_fmadd_ps(wv[r], xv, acc[m][r]);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < 4; ++r) {
      float v = _mm512_reduce_add_ps(acc[m][r]);
      for (int64_t k = K16; k < K; ++k) v += x[m * K + k] * to_f<T>(wr[r][k]);
      y[m * N + n + r] = v;
    }
}

template <typename T>
__attribute__((target("avx512f,avx512bw,fma")))
static void f_rows_avx512(const float* x, int64_t M, int64_t K, const T* w, float* y, int64_t N, int64_t n0, int64_t n1) {
#define ONE(B) f_tile<B, T>(x + m * K, K, w, y + m * N, N, n)
  TILED_ROWS(ONE, f_rows_ref<T>(x, M, K, w, y, N, n, n1));
#undef ONE
}

// bf16 weights on CPUs with AVX512-BF16: activations rounded to bf16 once per call, then one
// vdpbf16ps per 32 weights (pairs multiplied, summed in fp32) instead of widening every weight
template <int MB>
__attribute__((target("avx512f,avx512bw,avx512bf16")))
static inline void bf_tile(const uint16_t* x, int64_t K, const uint16_t* w, float* y, int64_t N, int64_t n) {
  const uint16_t* wr[4] = {w + n * K, w + (n + 1) * K, w + (n + 2) * K, w + (n + 3) * K};
  __m512 acc[MB][4];
  for (int m = 0; m < MB; ++m) for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    __m512i wv[4];
    for (int r = 0; r < 4; ++r) {
      pf(wr[r] + PFD * K + k);
      wv[r] = _mm512_loadu_si512((const void*)(wr[r] + k));
    }
    for (int m = 0; m < MB; ++m) {
      const __m512i xv = _mm512_loadu_si512((const void*)(x + m * K + k));
      for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], (__m512bh)wv[r], (__m512bh)xv);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < 4; ++r) y[m * N + n + r] = _mm512_reduce_add_ps(acc[m][r]);
}

static void bf_rows_ref(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, float* y, int64_t N, int64_t n0, int64_t n1) {
  auto f = [](uint16_t h) { uint32_t b = (uint32_t)h << 16; float v; std::memcpy(&v, &b, 4); return v; };
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += f(x[m * K + k]) * f(w[n * K + k]);
      y[m * N + n] = acc;
    }
}

__attribute__((target("avx512f,avx512bw,avx512bf16")))
static void bf_rows_avx512(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, float* y, int64_t N, int64_t n0, int64_t n1) {
#define ONE(B) bf_tile<B>(x + m * K, K, w, y + m * N, N, n)
  TILED_ROWS(ONE, bf_rows_ref(x, M, K, w, y, N, n, n1));
#undef ONE
}

static bool has_avx512bf16() {
  static const bool ok = has_avx512() && __builtin_cpu_supports("avx512bf16");
  return ok;
}

at::Tensor dense_mm(at::Tensor x, at::Tensor w) {
  // w (N, K) fp32 or bf16, x (M, K) fp32 -> (M, N) fp32
  const int64_t M = x.size(0), N = w.size(0), K = w.size(1);
  check_x(x, K);
  TORCH_CHECK(w.is_contiguous() && (w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16));
  auto y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>(); float* yp = y.data_ptr<float>();
  const bool fast = has_avx512();
  const int64_t bytes = K * w.element_size();
  const int64_t grain = std::max<int64_t>(4, ((131072 / std::max<int64_t>(bytes, 1)) + 3) & ~int64_t(3));
  if (w.scalar_type() == at::kBFloat16 && K % 32 == 0 && has_avx512bf16()) {
    auto xb = x.to(at::kBFloat16);  // round to nearest even, once for all weight rows
    const uint16_t* xbp = reinterpret_cast<const uint16_t*>(xb.data_ptr<at::BFloat16>());
    const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
    at::parallel_for(0, (N + 3) / 4, std::max<int64_t>(1, grain / 4), [&](int64_t b, int64_t e) {
      bf_rows_avx512(xbp, M, K, wp, yp, N, b * 4, std::min(N, e * 4));
    });
    return y;
  }
  at::parallel_for(0, (N + 3) / 4, std::max<int64_t>(1, grain / 4), [&](int64_t b, int64_t e) {
    const int64_t n0 = b * 4, n1 = std::min(N, e * 4);
    if (w.scalar_type() == at::kFloat) {
      const float* wp = w.data_ptr<float>();
      if (fast) f_rows_avx512<float>(xp, M, K, wp, yp, N, n0, n1); else f_rows_ref<float>(xp, M, K, wp, yp, N, n0, n1);
    } else {
      const at::BFloat16* wp = w.data_ptr<at::BFloat16>();
      if (fast) f_rows_avx512<at::BFloat16>(xp, M, K, wp, yp, N, n0, n1); else f_rows_ref<at::BFloat16>(xp, M, K, wp, yp, N, n0, n1);
    }
  });
  return y;
}
