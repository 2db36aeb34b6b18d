// Paged attention for decode: one query per sequence, its K / V read in place through the paged
// cache's slot list (no gather copy, no padding computed).
#include <cmath>
#include <vector>

#include "common.h"
#include "kernels.h"

// p[j] = exp(p[j] - max) in place, for a softmax computed in parts; returns (max, sum)
static std::pair<float, float> exp_row(float* p, int64_t L) {
  float mx = -INFINITY, sum = 0.f;
  for (int64_t j = 0; j < L; ++j) mx = std::max(mx, p[j]);
  for (int64_t j = 0; j < L; ++j) { p[j] = std::exp(p[j] - mx); sum += p[j]; }
  return {mx, sum};
}

__attribute__((target("avx512f")))
static std::pair<float, float> exp_row_avx512(float* p, int64_t L) {
  const int64_t L16 = L & ~int64_t(15);
  __m512 mv = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < L16; j += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(p + j));
  float mx = _mm512_reduce_max_ps(mv);
  for (int64_t j = L16; j < L; ++j) mx = std::max(mx, p[j]);
  const __m512 m = _mm512_set1_ps(mx);
  __m512 sv = _mm512_setzero_ps();
  for (int64_t j = 0; j < L16; j += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p + j), m));
    _mm512_storeu_ps(p + j, e);
    sv = _mm512_add_ps(sv, e);
  }
  float sum = _mm512_reduce_add_ps(sv);
  for (int64_t j = L16; j < L; ++j) { p[j] = std::exp(p[j] - mx); sum += p[j]; }
  return {mx, sum};
}

// ---- the kernel ------------------------------------------------------------------------------
// q (B, H, D) fp32; kc / vc (Hkv, S, D) fp32 or bf16 (one layer of the paged cache); slots (B, W)
// int64 (cache slot of each position, padded); lens (B,) int64 (positions to attend) -> (B, H, D)
// fp32. A task is one (sequence, KV head, span of up to PAGED_SPAN positions): it reads its keys
// and values once for all the query heads of its group and leaves an unnormalised output with
// its softmax max and sum; a second pass merges a sequence's spans. Spans keep both threads busy
// when one sequence has fewer KV heads than there are threads (SmolLM2: 3 on 2 cores). No gather
// copy, no padding computed, and a sequence's result does not depend on the rest of the batch
// (its spans depend on its own length only).

static constexpr int64_t PAGED_SPAN = 64;

// the task's part: o (rep, D) unnormalised, then max (rep) and sum (rep)
template <typename T, bool FAST>
static inline __attribute__((always_inline)) void paged_task(const float* q, const T* kg, const T* vg, const int64_t* sl, int64_t L, int64_t S, int64_t rep,
                       int64_t D, float scale, float* part, std::vector<float>& sc) {
  sc.assign(rep * L, 0.f);
  const int64_t row_bytes = D * (int64_t)sizeof(T);
  for (int64_t j = 0; j < L; ++j) {
    TORCH_CHECK(sl[j] >= 0 && sl[j] < S, "paged_decode: slot out of range");
    if (j + 8 < L && sl[j + 8] >= 0 && sl[j + 8] < S)  // the next rows: the slot list defeats the hardware prefetcher
      for (int64_t o = 0; o < row_bytes; o += 64) {
        _mm_prefetch((const char*)(kg + sl[j + 8] * D) + o, _MM_HINT_T0);
        _mm_prefetch((const char*)(vg + sl[j + 8] * D) + o, _MM_HINT_T1);
      }
    const T* kr = kg + sl[j] * D;
    for (int64_t r = 0; r < rep; ++r) {
      const float* qr = q + r * D; float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < D; ++i) s += qr[i] * (float)kr[i];
      sc[r * L + j] = s * scale;
    }
  }
  for (int64_t r = 0; r < rep; ++r) {
    const auto ms = FAST ? exp_row_avx512(sc.data() + r * L, L) : exp_row(sc.data() + r * L, L);
    part[rep * D + r] = ms.first; part[rep * D + rep + r] = ms.second;
    std::memset(part + r * D, 0, D * sizeof(float));
  }
  for (int64_t j = 0; j < L; ++j) {
    const T* vr = vg + sl[j] * D;
    for (int64_t r = 0; r < rep; ++r) {
      const float p = sc[r * L + j]; float* o = part + r * D;
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) o[i] += p * (float)vr[i];
    }
  }
}

// AVX-512 version for head sizes that are multiples of 16 (64 and 128 in Llama models): a key
// row is loaded once into registers for all the query heads of its group, and the output rows
// stay in registers while the values stream past (the plain loops above reload them per value)
template <typename T>
__attribute__((target("avx512f,avx512bw,fma")))
static void paged_task_avx512(const float* q, const T* kg, const T* vg, const int64_t* sl, int64_t L, int64_t S, int64_t rep,
                              int64_t D, float scale, float* part, std::vector<float>& sc) {
  if (D % 16 != 0 || D > 256) { paged_task<T, true>(q, kg, vg, sl, L, S, rep, D, scale, part, sc); return; }
  const int64_t nv = D / 16, row_bytes = D * (int64_t)sizeof(T);
  sc.assign(rep * L, 0.f);
  int64_t j = 0;
  for (; j + 4 <= L; j += 4) {  // four keys at a time: one transposing reduction for their four dots
    const T* kr[4];
    for (int t = 0; t < 4; ++t) {
      TORCH_CHECK(sl[j + t] >= 0 && sl[j + t] < S, "paged_decode: slot out of range");
      kr[t] = kg + sl[j + t] * D;
      if (j + t + 8 < L && sl[j + t + 8] >= 0 && sl[j + t + 8] < S)  // the slot list defeats the hardware prefetcher
        for (int64_t o = 0; o < row_bytes; o += 64) {
          _mm_prefetch((const char*)(kg + sl[j + t + 8] * D) + o, _MM_HINT_T0);
          _mm_prefetch((const char*)(vg + sl[j + t + 8] * D) + o, _MM_HINT_T1);
        }
    }
    for (int64_t r = 0; r < rep; ++r) {
      const float* qr = q + r * D;
      __m512 a[4];
      for (int t = 0; t < 4; ++t) a[t] = _mm512_mul_ps(_mm512_loadu_ps(qr), load16(kr[t]));
      for (int64_t v = 1; v < nv; ++v) {
        const __m512 qv = _mm512_loadu_ps(qr + 16 * v);
        for (int t = 0; t < 4; ++t) a[t] = _mm512_fmadd_ps(qv, load16(kr[t] + 16 * v), a[t]);
      }
      // per 128-bit lane: [a0, a1, a2, a3] partial sums, then the four lanes added
      const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a[0], a[1]), _mm512_unpackhi_ps(a[0], a[1]));
      const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a[2], a[3]), _mm512_unpackhi_ps(a[2], a[3]));
      __m512 s4 = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
      s4 = _mm512_add_ps(s4, _mm512_shuffle_f32x4(s4, s4, _MM_SHUFFLE(1, 0, 3, 2)));
      s4 = _mm512_add_ps(s4, _mm512_shuffle_f32x4(s4, s4, _MM_SHUFFLE(2, 3, 0, 1)));
      _mm_storeu_ps(sc.data() + r * L + j, _mm_mul_ps(_mm512_castps512_ps128(s4), _mm_set1_ps(scale)));
    }
  }
  for (; j < L; ++j) {
    TORCH_CHECK(sl[j] >= 0 && sl[j] < S, "paged_decode: slot out of range");
    if (j + 8 < L && sl[j + 8] >= 0 && sl[j + 8] < S)  // the slot list defeats the hardware prefetcher
      for (int64_t o = 0; o < row_bytes; o += 64) {
        _mm_prefetch((const char*)(kg + sl[j + 8] * D) + o, _MM_HINT_T0);
        _mm_prefetch((const char*)(vg + sl[j + 8] * D) + o, _MM_HINT_T1);
      }
    const T* kr = kg + sl[j] * D;
    __m512 kv[16];
    for (int64_t v = 0; v < nv; ++v) kv[v] = load16(kr + 16 * v);
    for (int64_t r = 0; r < rep; ++r) {
      const float* qr = q + r * D;
      __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(qr), kv[0]);
      for (int64_t v = 1; v < nv; ++v) acc = _mm512_fmadd_ps(_mm512_loadu_ps(qr + 16 * v), kv[v], acc);
      sc[r * L + j] = _mm512_reduce_add_ps(acc) * scale;
    }
  }
  for (int64_t r = 0; r < rep; ++r) {
    const auto ms = exp_row_avx512(sc.data() + r * L, L);
    part[rep * D + r] = ms.first; part[rep * D + rep + r] = ms.second;
  }
  // o[r] = sum_j p[r, j] v_j, for up to 4 heads x 64 values at a time in 16 registers
  for (int64_t r0 = 0; r0 < rep; r0 += 4) {
    const int64_t nr = std::min<int64_t>(4, rep - r0);
    for (int64_t v0 = 0; v0 < nv; v0 += 4) {
      const int64_t nw = std::min<int64_t>(4, nv - v0);
      __m512 acc[4][4];
      for (int r = 0; r < 4; ++r) for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
      for (int64_t j = 0; j < L; ++j) {
        const T* vr = vg + sl[j] * D + 16 * v0;
        __m512 vv[4];
        for (int v = 0; v < 4; ++v) if (v < nw) vv[v] = load16(vr + 16 * v);
        for (int r = 0; r < 4; ++r) {
          if (r >= nr) break;
          const __m512 p = _mm512_set1_ps(sc[(r0 + r) * L + j]);
          for (int v = 0; v < 4; ++v) if (v < nw) acc[r][v] = _mm512_fmadd_ps(p, vv[v], acc[r][v]);
        }
      }
      for (int r = 0; r < nr; ++r)
        for (int v = 0; v < nw; ++v) _mm512_storeu_ps(part + (r0 + r) * D + 16 * (v0 + v), acc[r][v]);
    }
  }
}

at::Tensor paged_decode(at::Tensor q, at::Tensor kc, at::Tensor vc, at::Tensor slots, at::Tensor lens) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat && q.is_contiguous(), "paged_decode: q must be contiguous fp32 (B, H, D)");
  TORCH_CHECK(kc.dim() == 3 && kc.is_contiguous() && vc.is_contiguous() && vc.sizes() == kc.sizes() &&
              kc.scalar_type() == vc.scalar_type() && (kc.scalar_type() == at::kFloat || kc.scalar_type() == at::kBFloat16),
              "paged_decode: kc / vc must be contiguous fp32 or bf16 (Hkv, S, D)");
  TORCH_CHECK(slots.dim() == 2 && slots.scalar_type() == at::kLong && slots.is_contiguous() && slots.size(0) == q.size(0) &&
              lens.scalar_type() == at::kLong && lens.is_contiguous() && lens.numel() == q.size(0), "paged_decode: bad slots / lens");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), Hkv = kc.size(0), S = kc.size(1), W = slots.size(1);
  TORCH_CHECK(kc.size(2) == D && H % Hkv == 0, "paged_decode: head shapes do not match");
  const int64_t rep = H / Hkv, P = rep * (D + 2);  // floats per task part
  const int64_t* sp = slots.data_ptr<int64_t>(); const int64_t* lp = lens.data_ptr<int64_t>();
  std::vector<int64_t> first(B + 1, 0);  // the first task of each sequence
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lp[b] > 0 && lp[b] <= W, "paged_decode: length out of range");
    first[b + 1] = first[b] + Hkv * ((lp[b] + PAGED_SPAN - 1) / PAGED_SPAN);
  }
  std::vector<float> parts(first[B] * P);
  auto out = at::empty({B, H, D}, q.options());
  const float* qp = q.data_ptr<float>(); float* op = out.data_ptr<float>();
  const float scale = 1.f / std::sqrt((float)D);
  const bool fast = has_avx512();
  at::parallel_for(0, first[B], 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> sc;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = std::upper_bound(first.begin(), first.end(), t) - first.begin() - 1;
      const int64_t spans = (first[b + 1] - first[b]) / Hkv, g = (t - first[b]) / spans, s = (t - first[b]) % spans;
      const int64_t j0 = s * PAGED_SPAN, n = std::min(PAGED_SPAN, lp[b] - j0);
      const float* qg = qp + (b * H + g * rep) * D; float* part = parts.data() + t * P;
      const int64_t* sl = sp + b * W + j0;
      if (kc.scalar_type() == at::kFloat) {
        const float* kg = kc.data_ptr<float>() + g * S * D; const float* vg = vc.data_ptr<float>() + g * S * D;
        if (fast) paged_task_avx512<float>(qg, kg, vg, sl, n, S, rep, D, scale, part, sc);
        else paged_task<float, false>(qg, kg, vg, sl, n, S, rep, D, scale, part, sc);
      } else {
        const at::BFloat16* kg = kc.data_ptr<at::BFloat16>() + g * S * D; const at::BFloat16* vg = vc.data_ptr<at::BFloat16>() + g * S * D;
        if (fast) paged_task_avx512<at::BFloat16>(qg, kg, vg, sl, n, S, rep, D, scale, part, sc);
        else paged_task<at::BFloat16, false>(qg, kg, vg, sl, n, S, rep, D, scale, part, sc);
      }
    }
  });
  // merge each (sequence, KV head)'s spans: out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s
  at::parallel_for(0, B * Hkv, 16, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / Hkv, g = u % Hkv, spans = (first[b + 1] - first[b]) / Hkv;
      const float* p0 = parts.data() + (first[b] + g * spans) * P;
      for (int64_t r = 0; r < rep; ++r) {
        float M = -INFINITY, l = 0.f;
        for (int64_t s = 0; s < spans; ++s) M = std::max(M, p0[s * P + rep * D + r]);
        float* o = op + (b * H + g * rep + r) * D;
        std::memset(o, 0, D * sizeof(float));
        for (int64_t s = 0; s < spans; ++s) {
          const float* ps = p0 + s * P; const float w = std::exp(ps[rep * D + r] - M);
          l += w * ps[rep * D + rep + r];
          for (int64_t i = 0; i < D; ++i) o[i] += w * ps[r * D + i];
        }
        const float inv = 1.f / l;
        for (int64_t i = 0; i < D; ++i) o[i] *= inv;
      }
    }
  });
  return out;
}
