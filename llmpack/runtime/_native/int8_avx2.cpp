// llmpack's native int8 kernels for AVX2 CPUs without VNNI (built on first use by llmpack.runtime.native).
//
// PyTorch has no per-token dynamic int8 linear for these CPUs: its oneDNN and FBGEMM int8 matmuls take
// one activation scale per tensor and cost ~50-100 us per call whatever the size. These kernels do the
// whole layer in one call: per-token quantization, an integer matmul, and the float epilogue.
//
// Arithmetic (the same as llmpack.runtime.modules' PyTorch path, see docs/int8-format.md):
//   activations: per token, centred on c = (max + min) / 2 with half-range h = (max - min) / 2:
//     q = round_half_even((x - c) * 64 / h) in [-64, 64], stored as u = q + 64 (uint8), so the 129 levels
//     span the token's own [min, max] (one-sided inputs such as GELU outputs get twice the resolution of
//     a grid symmetric around zero);
//   weights: int8 [N, K] with one float scale per output channel;
//   acc[m, n] = sum_k u[m, k] * w[n, k] (exact int32), minus corr[n] = 64 * sum_k w[n, k] (exact), so
//   y[m, n] = (float(acc - corr) * (h[m] / 64) + c[m] * sum_k w[n, k]) * w_scale[n] (+ bias[n]).
// AVX2's u8 x s8 multiply (vpmaddubsw) adds two products in int16: 2 * 128 * 128 fits, hence 7-bit tokens.
// With act_bits = 8, tokens are int8 q = round_half_even((x - c) * 127 / h) and the matmul multiplies |w| by
// q with w's sign moved onto it (tile<MR, true>); acc is then sum_k q * w itself (no zero point to remove).
//
// Weight layout ("panels"): columns in groups of 16, K in groups of 4 (both zero-padded); for panel p and
// group g, 64 bytes: columns 0-7 then 8-15, each column's 4 weights of that group. One 4-byte group of a
// token broadcast against a 32-byte panel row gives 8 columns' partial sums in one vpmaddubsw/vpmaddwd.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr float kEps = 1e-12f;  // llmpack.quant.int8.SCALE_EPS
constexpr float kQmax = 64.0f;  // llmpack.runtime.modules._ONEDNN_QMAX
constexpr int64_t kNr = 16;     // columns per panel
constexpr int64_t kMr = 4;      // tokens per register tile
constexpr int64_t kMb = 256;    // tokens per block (keeps a block of activations in L2)

int64_t round_up4(int64_t k) { return (k + 3) / 4 * 4; }

// ----------------------------------------------------------------------------------- activations
// (min, max) of a row; NaN in the row makes both NaN (as torch.aminmax does).
void row_minmax(const float* x, int64_t k, float* lo, float* hi) {
  const float inf = std::numeric_limits<float>::infinity();
  __m256 mn = _mm256_set1_ps(inf), mx = _mm256_set1_ps(-inf);
  __m256 nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    mn = _mm256_min_ps(mn, v);
    mx = _mm256_max_ps(mx, v);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  alignas(32) float bl[8], bh[8];
  _mm256_store_ps(bl, mn);
  _mm256_store_ps(bh, mx);
  bool has_nan = _mm256_movemask_ps(nan) != 0;
  float a = inf, b = -inf;
  for (int j = 0; j < 8; ++j) {
    a = std::min(a, bl[j]);
    b = std::max(b, bh[j]);
  }
  for (; i < k; ++i) {
    has_nan = has_nan || std::isnan(x[i]);
    a = std::min(a, x[i]);
    b = std::max(b, x[i]);
  }
  const float q = std::numeric_limits<float>::quiet_NaN();
  *lo = has_nan ? q : a;
  *hi = has_nan ? q : b;
}

// max |x| over a row; NaN propagates (as torch.amax does: std::max keeps a NaN first argument).
float row_absmax(const float* x, int64_t k) {
  float lo, hi;
  row_minmax(x, k, &lo, &hi);
  return std::max(-lo, hi);
}

// 7-bit: out[i] = round_half_even((x[i] - c) * inv) + 64 for i < k (|(x - c) * inv| <= 64 by
// construction), 64 up to kp. 8-bit (S8): the int8 round_half_even((x[i] - c) * inv) (|.| <= 127), 0 up to kp.
template <bool S8>
void row_q(const float* x, float c, float inv, uint8_t* out, int64_t k, int64_t kp) {
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256 vc = _mm256_set1_ps(c);
  const int zero = S8 ? 0 : 64;
  const __m256i off = _mm256_set1_epi32(zero);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undo the per-lane packs
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    __m256i q[4];
    for (int j = 0; j < 4; ++j) {
      const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8 * j), vc);
      const __m256 v = _mm256_round_ps(_mm256_mul_ps(d, vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q[j] = _mm256_add_epi32(_mm256_cvtps_epi32(v), off);
    }
    const __m256i lo = _mm256_packs_epi32(q[0], q[1]), hi = _mm256_packs_epi32(q[2], q[3]);
    const __m256i c = S8 ? _mm256_packs_epi16(lo, hi) : _mm256_packus_epi16(lo, hi);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_permutevar8x32_epi32(c, order));
  }
  for (; i < k; ++i) out[i] = static_cast<uint8_t>(static_cast<int>(std::nearbyint((x[i] - c) * inv)) + zero);
  for (; i < kp; ++i) out[i] = static_cast<uint8_t>(zero);
}

// Per-token quantization of x [m, k] into u [m, kp], token scales h / qmax and centres c (see the top);
// qmax = 64 (7-bit, u8 with zero point 64) or 127 (8-bit, s8).
void quantize_tokens(const float* x, int64_t m, int64_t k, int64_t kp, uint8_t* u, float* scale, float* centre,
                     bool s8) {
  const float qmax = s8 ? 127.0f : kQmax;
  at::parallel_for(0, m, std::max<int64_t>(1, 16384 / std::max<int64_t>(k, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float lo, hi;
      row_minmax(x + r * k, k, &lo, &hi);
      const float c = (hi + lo) * 0.5f;
      const float h = std::max((hi - lo) * 0.5f, kEps);  // std::max(NaN, eps) keeps NaN
      if (s8) row_q<true>(x + r * k, c, (1.0f / h) * qmax, u + r * kp, k, kp);
      else row_q<false>(x + r * k, c, (1.0f / h) * qmax, u + r * kp, k, kp);
      scale[r] = h / qmax;
      centre[r] = c;
    }
  });
}

// Two 7-bit terms per token, x ~ q1 * s1 + q2 * s2 (q2 quantizes q1's rounding error): rows 0..m-1 of u
// hold q1 + 64, rows m..2m-1 hold q2 + 64; q in [-64, 63]. The weight-only path (error <= amax / 8192).
void quantize_two_terms(const float* x, int64_t m, int64_t k, int64_t kp, uint8_t* u, float* scale) {
  at::parallel_for(0, m, std::max<int64_t>(1, 4096 / std::max<int64_t>(k, 1)), [&](int64_t b, int64_t e) {
    std::vector<float> rest(k);
    for (int64_t r = b; r < e; ++r) {
      const float* xr = x + r * k;
      const float s1 = std::max(row_absmax(xr, k), kEps) / kQmax;
      uint8_t* u1 = u + r * kp;
      for (int64_t i = 0; i < k; ++i) {
        const float q = std::min(std::max(std::nearbyint(xr[i] / s1), -kQmax), kQmax - 1.0f);
        u1[i] = static_cast<uint8_t>(static_cast<int>(q) + 64);
        rest[i] = xr[i] - q * s1;
      }
      const float s2 = std::max(row_absmax(rest.data(), k), kEps) / kQmax;
      uint8_t* u2 = u + (m + r) * kp;
      for (int64_t i = 0; i < k; ++i) {
        const float q = std::min(std::max(std::nearbyint(rest[i] / s2), -kQmax), kQmax - 1.0f);
        u2[i] = static_cast<uint8_t>(static_cast<int>(q) + 64);
      }
      for (int64_t i = k; i < kp; ++i) u1[i] = u2[i] = 64;
      scale[r] = s1;
      scale[m + r] = s2;
    }
  });
}

// ----------------------------------------------------------------------------------- matmul
// acc[MR tokens][16 columns] = sum_k a[r, k] * w[c, k] over a panel, exact in int32.
// 7-bit tokens (S8 = false): u8 tokens in [0, 128] times the int8 weights, vpmaddubsw + vpmaddwd.
// 8-bit tokens (S8 = true, int8 q in [-127, 127]): vpmaddubsw needs one unsigned operand, so it multiplies
// |w| (u8, <= 128) by q with w's sign moved onto it (vpsignb); pair sums <= 2 * 128 * 127 fit int16. One
// more instruction per multiply (measured 20-45 % slower, most for long K). GCC spills one accumulator
// here; a 3-token tile without spills was slower in the model (measured), so both widths keep MR tokens.
template <int MR, bool S8>
inline void tile(const uint8_t* a, int64_t lda, const int8_t* panel, int64_t k4, int32_t* out) {
  __m256i acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t g = 0; g < k4; ++g) {
    if constexpr (S8) {
      for (int h = 0; h < 2; ++h) {
        const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(panel + g * 64 + 32 * h));
        const __m256i wabs = _mm256_abs_epi8(w);
        for (int r = 0; r < MR; ++r) {
          int32_t four;
          std::memcpy(&four, a + r * lda + g * 4, 4);
          const __m256i av = _mm256_sign_epi8(_mm256_set1_epi32(four), w);
          acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, av), ones));
        }
      }
    } else {
      const __m256i b0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(panel + g * 64));
      const __m256i b1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(panel + g * 64 + 32));
      for (int r = 0; r < MR; ++r) {
        int32_t four;
        std::memcpy(&four, a + r * lda + g * 4, 4);
        const __m256i av = _mm256_set1_epi32(four);
        acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(av, b0), ones));
        acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(av, b1), ones));
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + r * kNr), acc[r][0]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + r * kNr + 8), acc[r][1]);
  }
}

struct Epilogue {
  const int32_t* corr;     // [n]
  const float* w_scale;    // [n]
  const float* bias;       // [n] or nullptr
  const float* tok_scale;   // [rows]
  const float* tok_centre;  // [rows] or nullptr (tokens centred on zero)
  bool s8 = false;          // 8-bit tokens: acc is sum_k q * w itself (no zero point to remove)
};

// y[r, c0 + j] = float(acc - corr) * w_scale * tok_scale[r] (+ tok_centre[r] * corr / 64 * w_scale) (+ bias),
// for an MR x 16 tile (nc <= 16 columns).
template <int MR>
inline void tile_out(const uint8_t* a, int64_t lda, const int8_t* panel, int64_t k4, const Epilogue& ep,
                     int64_t r0, int64_t c0, int64_t nc, float* y, int64_t ldy) {
  alignas(32) int32_t acc[MR * kNr];
  if (ep.s8) tile<MR, true>(a + r0 * lda, lda, panel, k4, acc);
  else tile<MR, false>(a + r0 * lda, lda, panel, k4, acc);
  if (nc == kNr) {
    for (int h = 0; h < 2; ++h) {
      const __m256i corr = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ep.corr + c0 + 8 * h));
      const __m256i zp = ep.s8 ? _mm256_setzero_si256() : corr;
      const __m256 ws = _mm256_loadu_ps(ep.w_scale + c0 + 8 * h);
      const __m256 bv = ep.bias ? _mm256_loadu_ps(ep.bias + c0 + 8 * h) : _mm256_setzero_ps();
      // sum_k w[n, k] * w_scale[n] (corr / 64 is an exact integer; float rounding only)
      const __m256 cs = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(corr), _mm256_set1_ps(1.0f / kQmax)), ws);
      for (int r = 0; r < MR; ++r) {
        const __m256i iv = _mm256_load_si256(reinterpret_cast<const __m256i*>(acc + r * kNr + 8 * h));
        __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(iv, zp)), ws);
        v = _mm256_mul_ps(v, _mm256_set1_ps(ep.tok_scale[r0 + r]));
        if (ep.tok_centre) v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_set1_ps(ep.tok_centre[r0 + r]), cs));
        if (ep.bias) v = _mm256_add_ps(v, bv);
        _mm256_storeu_ps(y + (r0 + r) * ldy + c0 + 8 * h, v);
      }
    }
    return;
  }
  for (int r = 0; r < MR; ++r) {
    for (int64_t j = 0; j < nc; ++j) {
      float v = static_cast<float>(acc[r * kNr + j] - (ep.s8 ? 0 : ep.corr[c0 + j])) * ep.w_scale[c0 + j];
      v = v * ep.tok_scale[r0 + r];
      if (ep.tok_centre) {
        v += ep.tok_centre[r0 + r] * ((static_cast<float>(ep.corr[c0 + j]) * (1.0f / kQmax)) * ep.w_scale[c0 + j]);
      }
      y[(r0 + r) * ldy + c0 + j] = ep.bias ? v + ep.bias[c0 + j] : v;
    }
  }
}

// y [rows, n] from quantized tokens u [rows, kp] and a packed weight.
void matmul(const uint8_t* u, int64_t rows, int64_t kp, const int8_t* packed, int64_t n, const Epilogue& ep,
            float* y) {
  const int64_t k4 = kp / 4, panels = (n + kNr - 1) / kNr;
  // Threads split the panels (each streams its share of the weight once per token block); small work
  // stays on one thread.
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(rows * kp, 1));
  at::parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t b = 0; b < rows; b += kMb) {
      const int64_t e = std::min(rows, b + kMb);
      for (int64_t p = p0; p < p1; ++p) {
        const int8_t* panel = packed + p * k4 * 64;
        const int64_t c0 = p * kNr, nc = std::min(kNr, n - c0);
        int64_t r = b;
        for (; r + kMr <= e; r += kMr) tile_out<kMr>(u, kp, panel, k4, ep, r, c0, nc, y, n);
        for (; r < e; ++r) tile_out<1>(u, kp, panel, k4, ep, r, c0, nc, y, n);
      }
    }
  });
}

// ----------------------------------------------------------------------------------- ops
void check_layer(const at::Tensor& packed, const at::Tensor& corr, const at::Tensor& w_scale,
                 const std::optional<at::Tensor>& bias, int64_t kp) {
  TORCH_CHECK(corr.scalar_type() == at::kInt && corr.dim() == 1 && corr.is_contiguous(),
              "llmpack_avx2: corr must be a contiguous int32 vector");
  const int64_t n = corr.size(0);
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.is_contiguous() && w_scale.numel() == n,
              "llmpack_avx2: w_scale must be a contiguous float32 vector of the output size");
  TORCH_CHECK(packed.scalar_type() == at::kChar && packed.is_contiguous() &&
                  packed.numel() == (n + kNr - 1) / kNr * kNr * kp,
              "llmpack_avx2: packed weight does not match the input size (pack it with llmpack_avx2::pack)");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(packed.data_ptr()) % 32 == 0, "llmpack_avx2: packed weight not 32-byte aligned");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == n,
                "llmpack_avx2: bias must be a contiguous float32 vector of the output size");
  }
}

// A float32 input of `op`: contiguous, on the CPU, with `dims` dimensions (-1: at least one).
void check_float(const at::Tensor& x, const char* op, int64_t dims) {
  TORCH_CHECK((dims < 0 ? x.dim() >= 1 : x.dim() == dims) && x.scalar_type() == at::kFloat && x.is_contiguous() &&
                  x.device().is_cpu(),
              "llmpack_avx2::", op, ": x must be a contiguous float32 CPU ", dims == 2 ? "matrix" : "tensor");
}

void check_input(const at::Tensor& x) { check_float(x, "w8a8/w8a16", 2); }

const float* bias_ptr(const std::optional<at::Tensor>& b) {
  return (b.has_value() && b->defined()) ? b->data_ptr<float>() : nullptr;
}

// int8 [N, K] -> (panels, see the top of this file; corr[n] = 64 * sum_k w[n, k] as int32), without
// temporaries the size of the weight.
std::tuple<at::Tensor, at::Tensor> pack(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar && weight.device().is_cpu(),
              "llmpack_avx2::pack: weight must be an int8 CPU matrix [out, in]");
  const at::Tensor w = weight.contiguous();
  const int64_t n = w.size(0), k = w.size(1), kp = round_up4(k), panels = (n + kNr - 1) / kNr;
  TORCH_CHECK(k < (int64_t{1} << 17), "llmpack_avx2::pack: more than 131071 inputs would overflow int32 sums");
  at::Tensor out = at::zeros({panels * kNr * kp}, w.options());  // ATen's CPU allocator aligns to 64 bytes
  at::Tensor corr = at::empty({n}, w.options().dtype(at::kInt));
  const int8_t* src = w.data_ptr<int8_t>();
  int8_t* dst = out.data_ptr<int8_t>();
  int32_t* cp = corr.data_ptr<int32_t>();
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t c = p * kNr; c < std::min(n, (p + 1) * kNr); ++c) {
        const int64_t half = (c % kNr) / 8, col = c % 8;
        int32_t sum = 0;
        for (int64_t i = 0; i < k; ++i) {
          dst[((p * (kp / 4) + i / 4) * 2 + half) * 32 + col * 4 + i % 4] = src[c * k + i];
          sum += src[c * k + i];
        }
        cp[c] = 64 * sum;
      }
    }
  });
  return {out, corr};
}

// W8A8 for every layer reading x (quantized once): y_l = x W_l^T (+ b_l).
std::vector<at::Tensor> w8a8(const at::Tensor& x, at::TensorList packed, at::TensorList corr, at::TensorList w_scale,
                             const c10::List<std::optional<at::Tensor>>& bias, int64_t act_bits) {
  check_input(x);
  TORCH_CHECK(act_bits == 7 || act_bits == 8, "llmpack_avx2::w8a8: act_bits must be 7 or 8");
  const bool s8 = act_bits == 8;
  const size_t layers = packed.size();
  TORCH_CHECK(corr.size() == layers && w_scale.size() == layers && bias.size() == layers,
              "llmpack_avx2::w8a8: one packed weight, corr, scale and bias per layer");
  const int64_t m = x.size(0), k = x.size(1), kp = round_up4(k);
  for (size_t l = 0; l < layers; ++l) check_layer(packed[l], corr[l], w_scale[l], bias.get(l), kp);
  at::Tensor u = at::empty({m, kp}, x.options().dtype(at::kByte));
  at::Tensor tok = at::empty({2, m}, x.options());  // scales, centres
  float* scale = tok.data_ptr<float>();
  quantize_tokens(x.data_ptr<float>(), m, k, kp, u.data_ptr<uint8_t>(), scale, scale + m, s8);
  std::vector<at::Tensor> outs;
  outs.reserve(layers);
  for (size_t l = 0; l < layers; ++l) {
    const int64_t n = corr[l].size(0);
    at::Tensor y = at::empty({m, n}, x.options());
    const std::optional<at::Tensor> b = bias.get(l);
    const Epilogue ep{corr[l].data_ptr<int32_t>(), w_scale[l].data_ptr<float>(), bias_ptr(b), scale, scale + m, s8};
    matmul(u.data_ptr<uint8_t>(), m, kp, packed[l].data_ptr<int8_t>(), n, ep, y.data_ptr<float>());
    outs.push_back(std::move(y));
  }
  return outs;
}

// Weight-only int8 (float activations, as two 7-bit terms through one pass over the weight).
at::Tensor w8a16(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& corr, const at::Tensor& w_scale,
                 const std::optional<at::Tensor>& bias) {
  check_input(x);
  const int64_t m = x.size(0), k = x.size(1), kp = round_up4(k), n = corr.size(0);
  check_layer(packed, corr, w_scale, bias, kp);
  at::Tensor u = at::empty({2 * m, kp}, x.options().dtype(at::kByte));
  at::Tensor tok = at::empty({2 * m}, x.options());
  quantize_two_terms(x.data_ptr<float>(), m, k, kp, u.data_ptr<uint8_t>(), tok.data_ptr<float>());
  at::Tensor y2 = at::empty({2 * m, n}, x.options());
  const Epilogue ep{corr.data_ptr<int32_t>(), w_scale.data_ptr<float>(), nullptr, tok.data_ptr<float>(), nullptr};
  matmul(u.data_ptr<uint8_t>(), 2 * m, kp, packed.data_ptr<int8_t>(), n, ep, y2.data_ptr<float>());
  at::Tensor y = at::empty({m, n}, x.options());
  const float* t = y2.data_ptr<float>();
  const float* bp = bias_ptr(bias);
  float* out = y.data_ptr<float>();
  at::parallel_for(0, m, std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      for (int64_t j = 0; j < n; ++j) {
        const float v = t[r * n + j] + t[(m + r) * n + j];
        out[r * n + j] = bp ? v + bp[j] : v;
      }
    }
  });
  return y;
}

// ----------------------------------------------------------------------------------- float helpers
// Llama-style RMSNorm in float32: y = (x * (1 / sqrt(mean(x^2) + eps))) * weight, one read and one write
// per token (transformers' module is six tensor operations, each a pass over the activations).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_float(x, "rms_norm", -1);
  const int64_t k = x.size(-1);
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.is_contiguous() && weight.numel() == k,
              "llmpack_avx2::rms_norm: weight must be a contiguous float32 vector of the last dimension's size");
  at::Tensor y = at::empty_like(x);
  const int64_t m = k > 0 ? x.numel() / k : 0;
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const float e = static_cast<float>(eps);
  at::parallel_for(0, m, std::max<int64_t>(1, 32768 / std::max<int64_t>(k, 1)), [&](int64_t b, int64_t end) {
    for (int64_t r = b; r < end; ++r) {
      const float* xr = xp + r * k;
      float* yr = yp + r * k;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      int64_t i = 0;
      for (; i + 16 <= k; i += 16) {
        const __m256 v0 = _mm256_loadu_ps(xr + i), v1 = _mm256_loadu_ps(xr + i + 8);
        a0 = _mm256_add_ps(a0, _mm256_mul_ps(v0, v0));
        a1 = _mm256_add_ps(a1, _mm256_mul_ps(v1, v1));
      }
      alignas(32) float buf[8];
      _mm256_store_ps(buf, _mm256_add_ps(a0, a1));
      float ss = 0.f;
      for (int j = 0; j < 8; ++j) ss += buf[j];
      for (; i < k; ++i) ss += xr[i] * xr[i];
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(k) + e);
      const __m256 vinv = _mm256_set1_ps(inv);
      i = 0;
      for (; i + 8 <= k; i += 8) {
        _mm256_storeu_ps(yr + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), vinv), _mm256_loadu_ps(wp + i)));
      }
      for (; i < k; ++i) yr[i] = (xr[i] * inv) * wp[i];
    }
  });
  return y;
}

// exp(x) for 8 floats (Cephes' expf: range reduction by ln 2, degree-6 polynomial, fused multiply-adds;
// ~1 ulp on [-87, 88]; inputs are clamped to that range, so the result is ~1e-38 below it and ~2e38 above:
// callers divide by 1 + exp(.), where these act as 0 and infinity). NaN inputs give an arbitrary value:
// callers keep NaN otherwise.
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3365447504f)), _mm256_set1_ps(88.3762626647949f));
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(y, x), x, x), _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// y[i] = f(a[i], b[i]) over n floats (a one-input op passes a twice), 8 at a time with `vec`, the tail
// with `scalar`, split across threads.
template <class Vec, class Scalar>
void elementwise(int64_t n, const float* a, const float* b, float* y, Vec vec, Scalar scalar) {
  at::parallel_for(0, (n + 7) / 8, 2048, [&](int64_t begin, int64_t end8) {
    int64_t i = begin * 8;
    const int64_t end = std::min(n, end8 * 8);
    for (; i + 8 <= end; i += 8) _mm256_storeu_ps(y + i, vec(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    for (; i < end; ++i) y[i] = scalar(a[i], b[i]);
  });
}

// GELU, tanh approximation: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), computed as the equal
// x / (1 + exp(-2u)) (no cancellation for negative x). PyTorch's F.gelu(approximate="tanh") evaluates
// tanh itself, ~3x slower than exp on AVX2 CPUs (measured: 943 us for 128 x 3072 on 2 threads).
at::Tensor gelu_tanh(const at::Tensor& x) {
  check_float(x, "gelu_tanh", -1);
  at::Tensor y = at::empty_like(x);
  constexpr float kC = 0.7978845608028654f;  // sqrt(2 / pi)
  const __m256 one = _mm256_set1_ps(1.0f), c2 = _mm256_set1_ps(-2.0f * kC), k3 = _mm256_set1_ps(0.044715f);
  elementwise(
      x.numel(), x.data_ptr<float>(), x.data_ptr<float>(), y.data_ptr<float>(),
      [=](__m256 v, __m256) {  // by value: __m256 may alias the float stores
        const __m256 inner = _mm256_add_ps(v, _mm256_mul_ps(k3, _mm256_mul_ps(v, _mm256_mul_ps(v, v))));
        return _mm256_div_ps(v, _mm256_add_ps(one, exp8(_mm256_mul_ps(c2, inner))));
      },
      [](float v, float) { return v / (1.0f + std::exp(-2.0f * kC * (v + 0.044715f * v * v * v))); });
  return y;
}

// SwiGLU's gate: silu(g) * u = g / (1 + exp(-g)) * u in one pass (PyTorch takes two passes, its vectorised
// exp being the slow part on AVX2 CPUs: 1024 x 1536 on 2 threads, F.silu(g) * u 1.55 ms).
at::Tensor silu_mul(const at::Tensor& g, const at::Tensor& u) {
  check_float(g, "silu_mul", -1);
  check_float(u, "silu_mul", -1);
  TORCH_CHECK(g.sizes() == u.sizes(), "llmpack_avx2::silu_mul: gate and up must have the same shape");
  at::Tensor y = at::empty_like(g);
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  elementwise(
      g.numel(), g.data_ptr<float>(), u.data_ptr<float>(), y.data_ptr<float>(),
      [=](__m256 v, __m256 w) {  // by value: __m256 may alias the float stores
        return _mm256_mul_ps(_mm256_div_ps(v, _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, v)))), w);
      },
      [](float v, float w) { return v / (1.0f + std::exp(-v)) * w; });
  return y;
}

// y = x W^T for a few tokens and a wide float32 weight (an output head: 49152 x 576 in SmolLM2). The
// BLAS call PyTorch makes reads the weight at about half the memory bandwidth for one token; this reads
// each weight row once, for every token at a time (M <= 8 accumulators in registers).
template <int M>
void gemv_rows(const float* x, int64_t k, const float* w, int64_t r0, int64_t r1, float* y, int64_t n) {
  const int64_t k8 = k / 8 * 8;
  for (int64_t r = r0; r < r1; ++r) {
    const float* wr = w + r * k;
    __m256 acc[M];
    for (int t = 0; t < M; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < k8; i += 8) {
      const __m256 wv = _mm256_loadu_ps(wr + i);
      for (int t = 0; t < M; ++t) acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(_mm256_loadu_ps(x + t * k + i), wv));
    }
    for (int t = 0; t < M; ++t) {
      alignas(32) float buf[8];
      _mm256_store_ps(buf, acc[t]);
      float v = ((buf[0] + buf[4]) + (buf[1] + buf[5])) + ((buf[2] + buf[6]) + (buf[3] + buf[7]));
      for (int64_t i = k8; i < k; ++i) v += x[t * k + i] * wr[i];
      y[t * n + r] = v;
    }
  }
}

at::Tensor few_token_linear(const at::Tensor& x, const at::Tensor& weight) {
  check_float(x, "few_token_linear", 2);
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat && weight.is_contiguous() &&
                  weight.device().is_cpu() && weight.size(1) == x.size(1),
              "llmpack_avx2::few_token_linear: weight must be a contiguous float32 CPU matrix [out, in]");
  const int64_t m = x.size(0), k = x.size(1), n = weight.size(0);
  TORCH_CHECK(m >= 1 && m <= 8, "llmpack_avx2::few_token_linear: 1 to 8 tokens");
  at::Tensor y = at::empty({m, n}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, n, std::max<int64_t>(1, 32768 / std::max<int64_t>(k, 1)), [&](int64_t r0, int64_t r1) {
    switch (m) {
      case 1: gemv_rows<1>(xp, k, wp, r0, r1, yp, n); break;
      case 2: gemv_rows<2>(xp, k, wp, r0, r1, yp, n); break;
      case 3: gemv_rows<3>(xp, k, wp, r0, r1, yp, n); break;
      case 4: gemv_rows<4>(xp, k, wp, r0, r1, yp, n); break;
      case 5: gemv_rows<5>(xp, k, wp, r0, r1, yp, n); break;
      case 6: gemv_rows<6>(xp, k, wp, r0, r1, yp, n); break;
      case 7: gemv_rows<7>(xp, k, wp, r0, r1, yp, n); break;
      default: gemv_rows<8>(xp, k, wp, r0, r1, yp, n); break;
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(llmpack_avx2, m) {
  m.def("pack(Tensor weight) -> (Tensor, Tensor)");
  m.def("w8a8(Tensor x, Tensor[] packed, Tensor[] corr, Tensor[] w_scale, Tensor?[] bias, int act_bits=7) -> Tensor[]");
  m.def("w8a16(Tensor x, Tensor packed, Tensor corr, Tensor w_scale, Tensor? bias) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("few_token_linear(Tensor x, Tensor weight) -> Tensor");
  m.def("gelu_tanh(Tensor x) -> Tensor");
  m.def("silu_mul(Tensor g, Tensor u) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmpack_avx2, CPU, m) {
  m.impl("pack", &pack);
  m.impl("w8a8", &w8a8);
  m.impl("w8a16", &w8a16);
  m.impl("rms_norm", &rms_norm);
  m.impl("few_token_linear", &few_token_linear);
  m.impl("gelu_tanh", &gelu_tanh);
  m.impl("silu_mul", &silu_mul);
}
