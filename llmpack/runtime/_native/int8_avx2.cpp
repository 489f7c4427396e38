// llmpack's native int8 helpers for AVX2 CPUs without VNNI (built on first use by llmpack.runtime.native).
//
// onednn_w8a8: per-token int8 activations around oneDNN's u8 x s8 matmul, in one call per input:
//   1. each row's absmax and its quantization, round(x * 64 / amax) + 64 as uint8 (one pass per row);
//   2. for every layer reading that input: onednn::qlinear_pointwise (through the dispatcher, as
//      llmpack.runtime.modules calls it from Python), then y * (amax / 64) (+ bias) in place.
// The float operations are those of the Python path, in the same order and without contraction
// (built with -ffp-contract=off), so the results are bit for bit the same; what goes away is a dozen
// Python-level tensor operations per layer.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace {

constexpr float kEps = 1e-12f;  // llmpack.quant.int8.SCALE_EPS
constexpr float kQmax = 64.0f;  // llmpack.runtime.modules._ONEDNN_QMAX
constexpr int64_t kGrainElems = 16384;

int64_t grain(int64_t row_len) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(row_len, 1)); }

// max |x| over a row; NaN propagates (as torch.amax does).
float row_absmax(const float* x, int64_t k) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  __m256 nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v));
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  alignas(32) float buf[8];
  _mm256_store_ps(buf, m);
  float a = 0.f;
  bool has_nan = _mm256_movemask_ps(nan) != 0;
  for (int j = 0; j < 8; ++j) a = std::max(a, buf[j]);
  for (; i < k; ++i) {
    has_nan = has_nan || std::isnan(x[i]);
    a = std::max(a, std::fabs(x[i]));
  }
  return has_nan ? std::numeric_limits<float>::quiet_NaN() : a;
}

// out[i] = round_half_even(x[i] * inv) + 64 as uint8; |x[i] * inv| <= 64 by construction.
void row_u8(const float* x, float inv, uint8_t* out, int64_t k) {
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256i off = _mm256_set1_epi32(64);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undo the per-lane packs
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    __m256i q[4];
    for (int j = 0; j < 4; ++j) {
      const __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * j), vinv),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q[j] = _mm256_add_epi32(_mm256_cvtps_epi32(v), off);
    }
    __m256i c = _mm256_packus_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_permutevar8x32_epi32(c, order));
  }
  for (; i < k; ++i) out[i] = static_cast<uint8_t>(static_cast<int>(std::nearbyint(x[i] * inv)) + 64);
}

std::vector<at::Tensor> onednn_w8a8(const at::Tensor& x, at::TensorList packed, at::TensorList w_scale,
                                    at::TensorList w_zp, at::TensorList comp,
                                    const c10::List<std::optional<at::Tensor>>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              "onednn_w8a8: x must be a contiguous float32 CPU matrix");
  const size_t layers = packed.size();
  TORCH_CHECK(w_scale.size() == layers && w_zp.size() == layers && comp.size() == layers && bias.size() == layers,
              "onednn_w8a8: one packed weight, scale, zero point, correction and bias per layer");
  const int64_t m = x.size(0), k = x.size(1);
  at::Tensor xu8 = at::empty({m, k}, x.options().dtype(at::kByte));
  at::Tensor token_scale = at::empty({m}, x.options());
  const float* xp = x.data_ptr<float>();
  uint8_t* up = xu8.data_ptr<uint8_t>();
  float* sp = token_scale.data_ptr<float>();
  at::parallel_for(0, m, grain(k), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float a = std::max(row_absmax(xp + r * k, k), kEps);  // std::max(NaN, eps) keeps NaN
      row_u8(xp + r * k, (1.0f / a) * kQmax, up + r * k, k);
      sp[r] = a / kQmax;
    }
  });
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("onednn::qlinear_pointwise", "");
  std::vector<at::Tensor> outs;
  outs.reserve(layers);
  for (size_t l = 0; l < layers; ++l) {
    torch::jit::Stack stack;
    stack.reserve(13);
    stack.emplace_back(xu8);
    stack.emplace_back(1.0);         // x_scale: the token scale is applied below
    stack.emplace_back(int64_t{0});  // x_zero_point: 64 is removed by `comp`, passed as the bias
    stack.emplace_back(packed[l]);
    stack.emplace_back(w_scale[l]);
    stack.emplace_back(w_zp[l]);
    stack.emplace_back(comp[l]);
    stack.emplace_back(1.0);
    stack.emplace_back(int64_t{0});
    stack.emplace_back(at::kFloat);
    stack.emplace_back(std::string("none"));
    stack.emplace_back(c10::List<std::optional<at::Scalar>>());
    stack.emplace_back(std::string(""));
    op.callBoxed(&stack);
    at::Tensor y = stack[0].toTensor();
    TORCH_CHECK(y.scalar_type() == at::kFloat && y.is_contiguous() && y.size(0) == m,
                "onednn_w8a8: unexpected oneDNN output");
    const int64_t n = y.size(1);
    float* yp = y.data_ptr<float>();
    const std::optional<at::Tensor> b = bias.get(l);
    const float* bp = nullptr;
    if (b.has_value() && b->defined()) {
      TORCH_CHECK(b->scalar_type() == at::kFloat && b->is_contiguous() && b->numel() == n,
                  "onednn_w8a8: bias must be a contiguous float32 vector of the output size");
      bp = b->data_ptr<float>();
    }
    at::parallel_for(0, m, grain(n), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float s = sp[r];
        float* row = yp + r * n;
        if (bp != nullptr) {
          for (int64_t j = 0; j < n; ++j) row[j] = row[j] * s + bp[j];  // two roundings, like mul_ then add_
        } else {
          for (int64_t j = 0; j < n; ++j) row[j] *= s;
        }
      }
    });
    outs.push_back(std::move(y));
  }
  return outs;
}

}  // namespace

TORCH_LIBRARY(llmpack_avx2, m) {
  m.def("onednn_w8a8(Tensor x, Tensor[] packed, Tensor[] w_scale, Tensor[] w_zp, Tensor[] comp, Tensor?[] bias)"
        " -> Tensor[]",
        &onednn_w8a8);
}
