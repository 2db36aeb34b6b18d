// One whole transformer block for a decode step, in one call. A small model's decode step is
// dominated by per-op overhead (a Python call and a dispatch per op, ~35 ops per block); this
// runs the block's ops back to back in C++, from the block's LayerPlan. Same kernels as the
// per-op path, in the same order: the results are identical.
#include <cstring>

#include "kernels.h"

at::Tensor Projection::operator()(const at::Tensor& x) const {
  switch (format) {
    case 0: return dense_mm(x, weight);
    case 1: return int8_mm(x, weight, scales);
    case 2: return int4_mm(x, weight, scales);
    default: TORCH_CHECK(false, "decode_layer: unknown projection format ", format);
  }
}

at::Tensor decode_layer(at::Tensor x, const LayerPlan& p, at::Tensor cos, at::Tensor sin, at::Tensor kc,
                        at::Tensor vc, at::Tensor slot_mapping, at::Tensor slots, at::Tensor lens) {
  TORCH_CHECK((kc.scalar_type() == at::kFloat || kc.scalar_type() == at::kBFloat16) && vc.scalar_type() == kc.scalar_type() &&
              kc.is_contiguous() && vc.is_contiguous(), "decode_layer: the KV cache must be contiguous fp32 or bf16");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.is_contiguous() && slot_mapping.numel() == x.size(0),
              "decode_layer: one cache slot per row");
  const int64_t M = x.size(0), D = kc.size(2), S = kc.size(1), H = p.n_heads, Hkv = p.n_kv_heads;
  auto n1 = rms_norm(x, p.attention_norm, p.eps);
  auto qkv = p.wqkv(n1).view({M, H + 2 * Hkv, D});
  auto q = rope(qkv.narrow(1, 0, H), cos, sin);       // (M, H, D)
  auto k = rope(qkv.narrow(1, H, Hkv), cos, sin);     // (M, Hkv, D)
  {  // store this step's K / V in their cache slots (bf16: rounded to nearest even)
    const float* kp = k.data_ptr<float>(); const float* qkvp = qkv.data_ptr<float>();
    const int64_t* sm = slot_mapping.data_ptr<int64_t>();
    const bool bf = kc.scalar_type() == at::kBFloat16;
    for (int64_t m = 0; m < M; ++m) {
      TORCH_CHECK(sm[m] >= 0 && sm[m] < S, "decode_layer: slot out of range");
      for (int64_t g = 0; g < Hkv; ++g) {
        const float* ks = kp + (m * Hkv + g) * D; const float* vs = qkvp + (m * (H + 2 * Hkv) + H + Hkv + g) * D;
        const int64_t at_ = (g * S + sm[m]) * D;
        if (bf) {
          at::BFloat16* kd = kc.data_ptr<at::BFloat16>() + at_; at::BFloat16* vd = vc.data_ptr<at::BFloat16>() + at_;
          for (int64_t i = 0; i < D; ++i) { kd[i] = at::BFloat16(ks[i]); vd[i] = at::BFloat16(vs[i]); }
        } else {
          std::memcpy(kc.data_ptr<float>() + at_, ks, D * sizeof(float));
          std::memcpy(vc.data_ptr<float>() + at_, vs, D * sizeof(float));
        }
      }
    }
  }
  auto att = paged_decode(q, kc, vc, slots, lens);    // (M, H, D)
  auto h = p.wo(att.view({M, H * D}));
  h.add_(x);  // x + attention, the residual stream (same sum as x + o)
  auto n2 = rms_norm(h, p.ffn_norm, p.eps);
  auto f = p.w2(silu_mul(p.w13(n2)));
  return h.add_(f);
}

// every block of the model in one call (the per-block Python call costs ~15 us x layers a step)
at::Tensor decode_layers(at::Tensor x, const std::vector<LayerPlan>& plans, at::Tensor cos, at::Tensor sin,
                         std::vector<at::Tensor> kc, std::vector<at::Tensor> vc, at::Tensor slot_mapping,
                         at::Tensor slots, at::Tensor lens) {
  TORCH_CHECK(kc.size() == plans.size() && vc.size() == plans.size(), "decode_layers: a K / V cache per layer");
  for (size_t l = 0; l < plans.size(); ++l)
    x = decode_layer(x, plans[l], cos, sin, kc[l], vc[l], slot_mapping, slots, lens);
  return x;
}
