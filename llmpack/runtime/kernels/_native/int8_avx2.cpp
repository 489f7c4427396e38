// llmpack's native int8 kernels for AVX2 CPUs without VNNI (built on first use by llmpack.runtime.kernels.native).
//
// PyTorch has no per-token dynamic int8 linear for these CPUs: its oneDNN and FBGEMM int8 matmuls take
// one activation scale per tensor and cost ~50-100 us per call whatever the size. These kernels do the
// whole layer in one call: per-token quantization, an integer matmul, and the float epilogue.
//
// Arithmetic (see docs/int8-format.md; llmpack.runtime.kernels.reference computes the same in PyTorch):
//   weights: int8 [N, K] in [-127, 127] with one float scale per output channel;
//   act_bits = 8 (the default, the file's compressed-tensors semantics): per token, s = max(amax, eps) / 127.5,
//     q = clamp(round_half_even(x / s), -128, 127); acc[m, n] = sum_k q[m, k] * w[n, k] exactly in int32,
//     y[m, n] = float(acc) * s[m] * w_scale[n] (+ bias[n]) -- the reference up to float rounding.
//     AVX2's only int8 multiply (vpmaddubsw) takes one unsigned operand and adds two products in int16, so
//     it multiplies |q| (u8, <= 128) by w with q's sign moved onto it (vpsignb; |w| <= 127 so the negation
//     is exact): pair sums <= 2 * 128 * 127 fit int16.
//   act_bits = 7 (opt-in, less exact): per token, centred on c = (max + min) / 2 with half-range
//     h = (max - min) / 2: q = round_half_even((x - c) * 64 / h) in [-64, 64], stored as u = q + 64 (uint8);
//     acc = sum_k u * w minus corr[n] = 64 * sum_k w[n, k], so
//     y = (float(acc - corr) * (h / 64) + c * sum_k w[n, k]) * w_scale[n] (+ bias[n]). One instruction less
//     per multiply, but 129 levels instead of 256, and no level at zero: tokens with a massive outlier
//     lose their small values (measured in docs/int8-format.md).
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
constexpr float kQmax = 64.0f;  // llmpack.runtime.kernels.reference.QMAX7
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

// Centred 7-bit tokens: out[i] = round_half_even((x[i] - c) * inv) + 64 for i < k (|(x - c) * inv| <= 64 by
// construction), 64 up to kp.
void row_q7(const float* x, float c, float inv, uint8_t* out, int64_t k, int64_t kp) {
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256 vc = _mm256_set1_ps(c);
  const __m256i off = _mm256_set1_epi32(64);
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
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_permutevar8x32_epi32(_mm256_packus_epi16(lo, hi), order));
  }
  for (; i < k; ++i) out[i] = static_cast<uint8_t>(static_cast<int>(std::nearbyint((x[i] - c) * inv)) + 64);
  for (; i < kp; ++i) out[i] = 64;
}

// The file's 8-bit tokens: q[i] = clamp(round_half_even(x[i] / s), -128, 127) (a true division, as the
// reference computes it) as int8 in sq and |q[i]| as uint8 in aq, both zero up to kp. A NaN quotient becomes
// -128 (the token's scale is NaN then, so its outputs are NaN, as the reference's).
void row_q8(const float* x, float s, int8_t* sq, uint8_t* aq, int64_t k, int64_t kp) {
  const __m256 vs = _mm256_set1_ps(s);
  const __m256 lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    __m256i q[4];
    for (int j = 0; j < 4; ++j) {
      __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + i + 8 * j), vs),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);  // (max/min with NaN first return the second: NaN -> -128)
      q[j] = _mm256_cvtps_epi32(v);
    }
    const __m256i a = _mm256_packs_epi32(q[0], q[1]), b = _mm256_packs_epi32(q[2], q[3]);
    const __m256i v8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sq + i), v8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(aq + i), _mm256_abs_epi8(v8));  // |-128| = 0x80 = 128 as u8
  }
  for (; i < k; ++i) {
    const float v = std::nearbyint(x[i] / s);
    const int q = std::isnan(v) ? -128 : static_cast<int>(std::min(std::max(v, -128.0f), 127.0f));
    sq[i] = static_cast<int8_t>(q);
    aq[i] = static_cast<uint8_t>(q < 0 ? -q : q);
  }
  for (; i < kp; ++i) sq[i] = 0, aq[i] = 0;
}

// Per-token quantization of x [m, k] (see the top). 8-bit: sq, aq [m, kp] and scales s; 7-bit: u = aq [m, kp],
// scales h / 64 and centres c.
void quantize_tokens(const float* x, int64_t m, int64_t k, int64_t kp, int8_t* sq, uint8_t* aq, float* scale,
                     float* centre, bool s8) {
  at::parallel_for(0, m, std::max<int64_t>(1, 16384 / std::max<int64_t>(k, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float lo, hi;
      row_minmax(x + r * k, k, &lo, &hi);
      if (s8) {
        const float s = std::max(std::max(-lo, hi), kEps) / 127.5f;  // std::max(NaN, eps) keeps NaN
        row_q8(x + r * k, s, sq + r * kp, aq + r * kp, k, kp);
        scale[r] = s;
      } else {
        const float c = (hi + lo) * 0.5f;
        const float h = std::max((hi - lo) * 0.5f, kEps);
        row_q7(x + r * k, c, (1.0f / h) * kQmax, aq + r * kp, k, kp);
        scale[r] = h / kQmax;
        centre[r] = c;
      }
    }
  });
}

// ----------------------------------------------------------------------------------- matmul
// acc[MR tokens][16 columns] = sum_k a[r, k] * w[c, k] over a panel, exact in int32.
// 8-bit tokens (S8): |q| (u8 in aq) times w with q's sign (vpsignb with sq), vpmaddubsw + vpmaddwd.
// 7-bit tokens: u8 tokens in [0, 128] (aq) times the int8 weights, vpmaddubsw + vpmaddwd.
// GCC spills one accumulator with S8; a 3-token tile without spills was slower in the model (measured).
template <int MR, bool S8>
inline void tile(const uint8_t* aq, const int8_t* sq, int64_t lda, const int8_t* panel, int64_t k4, int32_t* out) {
  __m256i acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t g = 0; g < k4; ++g) {
    const __m256i b0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(panel + g * 64));
    const __m256i b1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(panel + g * 64 + 32));
    for (int r = 0; r < MR; ++r) {
      int32_t four;
      std::memcpy(&four, aq + r * lda + g * 4, 4);
      const __m256i av = _mm256_set1_epi32(four);
      __m256i w0 = b0, w1 = b1;
      if constexpr (S8) {
        int32_t sign;
        std::memcpy(&sign, sq + r * lda + g * 4, 4);
        const __m256i sv = _mm256_set1_epi32(sign);
        w0 = _mm256_sign_epi8(b0, sv);
        w1 = _mm256_sign_epi8(b1, sv);
      }
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(av, w0), ones));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(av, w1), ones));
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + r * kNr), acc[r][0]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + r * kNr + 8), acc[r][1]);
  }
}

// AVX512-VNNI (8-bit tokens): vpdpbusd adds four u8 x s8 products into int32 without saturation, so the tokens
// go in as u = q + 128 (q XOR 0x80) against the same panels (lane j of a 64-byte group is column j), and
// acc = sum_k q * w exactly once 128 * sum_k w = 2 * corr is taken off. Exact for every int8 weight, -128 too.
template <int MR>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void tile_vnni(const int8_t* sq, int64_t lda,
                                                                        const int8_t* panel, int64_t k4,
                                                                        const int32_t* corr16, int32_t* out) {
  __m512i acc[MR][2];  // two chains per token (even and odd groups): vpdpbusd's latency is not the bound
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
  const __m512i flip = _mm512_set1_epi32(static_cast<int>(0x80808080u));
  int64_t g = 0;
  for (; g + 2 <= k4; g += 2) {
    const __m512i w0 = _mm512_loadu_si512(reinterpret_cast<const void*>(panel + g * 64));
    const __m512i w1 = _mm512_loadu_si512(reinterpret_cast<const void*>(panel + g * 64 + 64));
    for (int r = 0; r < MR; ++r) {
      int64_t eight;
      std::memcpy(&eight, sq + r * lda + g * 4, 8);
      const __m512i a = _mm512_xor_si512(_mm512_set1_epi64(eight), flip);  // lanes: groups g, g+1, g, g+1 ...
      acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], _mm512_shuffle_epi32(a, _MM_PERM_AAAA), w0);
      acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], _mm512_shuffle_epi32(a, _MM_PERM_BBBB), w1);
    }
  }
  for (; g < k4; ++g) {
    const __m512i w = _mm512_loadu_si512(reinterpret_cast<const void*>(panel + g * 64));
    for (int r = 0; r < MR; ++r) {
      int32_t four;
      std::memcpy(&four, sq + r * lda + g * 4, 4);
      acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], _mm512_xor_si512(_mm512_set1_epi32(four), flip), w);
    }
  }
  for (int r = 0; r < MR; ++r) acc[r][0] = _mm512_add_epi32(acc[r][0], acc[r][1]);
  const __m512i c2 = _mm512_slli_epi32(_mm512_loadu_si512(reinterpret_cast<const void*>(corr16)), 1);
  for (int r = 0; r < MR; ++r) _mm512_storeu_si512(reinterpret_cast<void*>(out + r * kNr), _mm512_sub_epi32(acc[r][0], c2));
}

struct Epilogue {
  const int32_t* corr;     // [n]
  const float* w_scale;    // [n]
  const float* bias;       // [n] or nullptr
  const float* tok_scale;   // [rows]
  const float* tok_centre;  // [rows] or nullptr (8-bit tokens)
  bool s8 = false;          // 8-bit tokens: acc is sum_k q * w itself (no zero point to remove)
  bool vnni = false;        // 8-bit tokens through tile_vnni (AVX512-VNNI)
};

// y[r, c0 + j] = float(acc - corr) * w_scale * tok_scale[r] (+ tok_centre[r] * corr / 64 * w_scale) (+ bias),
// for an MR x 16 tile (nc <= 16 columns).
template <int MR>
inline void tile_out(const uint8_t* aq, const int8_t* sq, int64_t lda, const int8_t* panel, int64_t k4,
                     const Epilogue& ep, int64_t r0, int64_t c0, int64_t nc, float* y, int64_t ldy) {
  alignas(64) int32_t acc[MR * kNr];
  if (ep.vnni) {
    alignas(64) int32_t c16[kNr] = {0};
    const int32_t* cp = ep.corr + c0;
    if (nc < kNr) {
      std::memcpy(c16, cp, nc * sizeof(int32_t));
      cp = c16;
    }
    tile_vnni<MR>(sq + r0 * lda, lda, panel, k4, cp, acc);
  } else if (ep.s8) {
    tile<MR, true>(aq + r0 * lda, sq + r0 * lda, lda, panel, k4, acc);
  } else {
    tile<MR, false>(aq + r0 * lda, nullptr, lda, panel, k4, acc);
  }
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

// y [rows, n] from quantized tokens (aq, and sq for 8-bit, [rows, kp]) and a packed weight.
void matmul(const uint8_t* aq, const int8_t* sq, int64_t rows, int64_t kp, const int8_t* packed, int64_t n,
            const Epilogue& ep, float* y) {
  const int64_t k4 = kp / 4, panels = (n + kNr - 1) / kNr;
  // Threads split the panels (each streams its share of the weight once per token block); small work
  // stays on one thread.
  // A chunk is at least ~16 KB of weights and ~64k multiply-adds, so a decode step's layers still split.
  const int64_t grain = std::max<int64_t>(1, std::min((1 << 16) / std::max<int64_t>(rows * kp, 1),
                                                      (1 << 14) / std::max<int64_t>(kNr * kp, 1)));
  at::parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t b = 0; b < rows; b += kMb) {
      const int64_t e = std::min(rows, b + kMb);
      for (int64_t p = p0; p < p1; ++p) {
        const int8_t* panel = packed + p * k4 * 64;
        const int64_t c0 = p * kNr, nc = std::min(kNr, n - c0);
        int64_t r = b;
        for (; r + kMr <= e; r += kMr) tile_out<kMr>(aq, sq, kp, panel, k4, ep, r, c0, nc, y, n);
        for (; r < e; ++r) tile_out<1>(aq, sq, kp, panel, k4, ep, r, c0, nc, y, n);
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
std::vector<at::Tensor> w8a8_impl(const at::Tensor& x, at::TensorList packed, at::TensorList corr,
                                  at::TensorList w_scale, const c10::List<std::optional<at::Tensor>>& bias,
                                  int64_t act_bits, bool vnni) {
  check_input(x);
  TORCH_CHECK(act_bits == 7 || act_bits == 8, "llmpack_avx2::w8a8: act_bits must be 7 or 8");
  const bool s8 = act_bits == 8;
  const size_t layers = packed.size();
  TORCH_CHECK(corr.size() == layers && w_scale.size() == layers && bias.size() == layers,
              "llmpack_avx2::w8a8: one packed weight, corr, scale and bias per layer");
  const int64_t m = x.size(0), k = x.size(1), kp = round_up4(k);
  for (size_t l = 0; l < layers; ++l) check_layer(packed[l], corr[l], w_scale[l], bias.get(l), kp);
  at::Tensor aq = at::empty({m, kp}, x.options().dtype(at::kByte));
  at::Tensor sq = at::empty({s8 ? m : 0, kp}, x.options().dtype(at::kChar));
  at::Tensor tok = at::empty({2, m}, x.options());  // scales, centres
  float* scale = tok.data_ptr<float>();
  quantize_tokens(x.data_ptr<float>(), m, k, kp, s8 ? sq.data_ptr<int8_t>() : nullptr, aq.data_ptr<uint8_t>(), scale,
                  scale + m, s8);
  std::vector<at::Tensor> outs;
  outs.reserve(layers);
  for (size_t l = 0; l < layers; ++l) {
    const int64_t n = corr[l].size(0);
    at::Tensor y = at::empty({m, n}, x.options());
    const std::optional<at::Tensor> b = bias.get(l);
    const Epilogue ep{corr[l].data_ptr<int32_t>(), w_scale[l].data_ptr<float>(), bias_ptr(b), scale,
                      s8 ? nullptr : scale + m, s8, vnni};
    matmul(aq.data_ptr<uint8_t>(), s8 ? sq.data_ptr<int8_t>() : nullptr, m, kp, packed[l].data_ptr<int8_t>(), n, ep,
           y.data_ptr<float>());
    outs.push_back(std::move(y));
  }
  return outs;
}

std::vector<at::Tensor> w8a8(const at::Tensor& x, at::TensorList packed, at::TensorList corr, at::TensorList w_scale,
                             const c10::List<std::optional<at::Tensor>>& bias, int64_t act_bits) {
  return w8a8_impl(x, packed, corr, w_scale, bias, act_bits, false);
}

// The same product (8-bit tokens, the file's semantics) through AVX512-VNNI.
std::vector<at::Tensor> w8a8_vnni(const at::Tensor& x, at::TensorList packed, at::TensorList corr,
                                  at::TensorList w_scale, const c10::List<std::optional<at::Tensor>>& bias) {
  TORCH_CHECK(__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw"),
              "llmpack_avx2::w8a8_vnni: this CPU has no AVX512-VNNI");
  return w8a8_impl(x, packed, corr, w_scale, bias, 8, true);
}

// The file's per-token 8-bit quantization alone, for an integer matmul done elsewhere (torch._int_mm, whose
// oneDNN kernel uses AMX tiles where the CPU has them): q [m, k] int8 and the scales [m] -- one pass over x
// instead of PyTorch's five.
std::tuple<at::Tensor, at::Tensor> quantize_rows(const at::Tensor& x) {
  check_input(x);
  const int64_t m = x.size(0), k = x.size(1);
  TORCH_CHECK(k % 4 == 0, "llmpack_avx2::quantize_rows: the input size must be a multiple of 4");
  at::Tensor sq = at::empty({m, k}, x.options().dtype(at::kChar));
  at::Tensor aq = at::empty({m, k}, x.options().dtype(at::kByte));
  at::Tensor scale = at::empty({m}, x.options());
  quantize_tokens(x.data_ptr<float>(), m, k, k, sq.data_ptr<int8_t>(), aq.data_ptr<uint8_t>(),
                  scale.data_ptr<float>(), nullptr, true);
  return {sq, scale};
}

// y = float(acc) * tok_scale[r] * w_scale[c] (+ bias[c]) in one pass, the reference's operations in its order.
at::Tensor int_mm_epilogue(const at::Tensor& acc, const at::Tensor& tok_scale, const at::Tensor& w_scale,
                           const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(acc.dim() == 2 && acc.scalar_type() == at::kInt && acc.is_contiguous() && acc.device().is_cpu(),
              "llmpack_avx2::int_mm_epilogue: acc must be a contiguous int32 CPU matrix");
  const int64_t m = acc.size(0), n = acc.size(1);
  TORCH_CHECK(tok_scale.scalar_type() == at::kFloat && tok_scale.is_contiguous() && tok_scale.numel() == m,
              "llmpack_avx2::int_mm_epilogue: one float32 scale per row");
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.is_contiguous() && w_scale.numel() == n,
              "llmpack_avx2::int_mm_epilogue: one float32 scale per column");
  const float* b = bias_ptr(bias);
  if (b) TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() == n, "llmpack_avx2::int_mm_epilogue: bias");
  at::Tensor y = at::empty({m, n}, acc.options().dtype(at::kFloat));
  const int32_t* ap = acc.data_ptr<int32_t>();
  const float* ts = tok_scale.data_ptr<float>();
  const float* ws = w_scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, m, std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const __m256 t = _mm256_set1_ps(ts[r]);
      int64_t c = 0;
      for (; c + 8 <= n; c += 8) {
        __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ap + r * n + c))), t);
        v = _mm256_mul_ps(v, _mm256_loadu_ps(ws + c));
        if (b) v = _mm256_add_ps(v, _mm256_loadu_ps(b + c));
        _mm256_storeu_ps(yp + r * n + c, v);
      }
      for (; c < n; ++c) {
        const float v = static_cast<float>(ap[r * n + c]) * ts[r] * ws[c];
        yp[r * n + c] = b ? v + b[c] : v;
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

// Eight weights of row wr from i as float32: the float32 weight itself, or int8 converted exactly.
inline __m256 load8(const float* wr, int64_t i) { return _mm256_loadu_ps(wr + i); }
inline __m256 load8(const int8_t* wr, int64_t i) {
  int64_t eight;
  std::memcpy(&eight, wr + i, 8);
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(eight)));
}

// y = x W^T (* row_scale) for a few tokens: each weight row is read once for every token (M <= 8 accumulators
// in registers), float32 products and sums. Float32 W: an output head (49152 x 576 in SmolLM2), where the BLAS
// call PyTorch makes reads the weight at about half the memory bandwidth for one token. Int8 W with a scale
// per row: weight-only int8 layers and tied int8 heads on decode steps, the float result with int8 weights
// read as they are (converting the whole weight to float per call would cost more than the product).
template <int M, class W>
void gemv_rows(const float* x, int64_t k, const W* w, const float* row_scale, const float* bias, int64_t r0,
               int64_t r1, float* y, int64_t n) {
  // U independent sums per token hide the add latency when there are few tokens (one chain of adds would
  // bound a single token at 8 weights per add latency, about half the memory bandwidth).
  constexpr int U = M >= 4 ? 1 : (M == 1 ? 4 : 2);
  const int64_t k8 = k / 8 * 8, ku = k / (8 * U) * (8 * U);
  for (int64_t r = r0; r < r1; ++r) {
    const W* wr = w + r * k;
    __m256 acc[U][M];
    for (int u = 0; u < U; ++u)
      for (int t = 0; t < M; ++t) acc[u][t] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i < ku; i += 8 * U) {
      for (int u = 0; u < U; ++u) {
        const __m256 wv = load8(wr, i + 8 * u);
        for (int t = 0; t < M; ++t)
          acc[u][t] = _mm256_fmadd_ps(_mm256_loadu_ps(x + t * k + i + 8 * u), wv, acc[u][t]);
      }
    }
    for (; i < k8; i += 8) {
      const __m256 wv = load8(wr, i);
      for (int t = 0; t < M; ++t) acc[0][t] = _mm256_fmadd_ps(_mm256_loadu_ps(x + t * k + i), wv, acc[0][t]);
    }
    for (int t = 0; t < M; ++t) {
      __m256 sum = acc[0][t];
      for (int u = 1; u < U; ++u) sum = _mm256_add_ps(sum, acc[u][t]);
      alignas(32) float buf[8];
      _mm256_store_ps(buf, sum);
      float v = ((buf[0] + buf[4]) + (buf[1] + buf[5])) + ((buf[2] + buf[6]) + (buf[3] + buf[7]));
      for (int64_t j = k8; j < k; ++j) v += x[t * k + j] * static_cast<float>(wr[j]);
      if (row_scale) v *= row_scale[r];
      y[t * n + r] = bias ? v + bias[r] : v;
    }
  }
}

// The same rows with AVX512 (16 weights per instruction), on CPUs that have it: a decode step's output head is
// bound by memory bandwidth, and the wider loads and converts reach it with two threads where AVX2 does not.
inline __attribute__((target("avx512f"))) __m512 load16(const float* wr, int64_t i) { return _mm512_loadu_ps(wr + i); }
inline __attribute__((target("avx512f"))) __m512 load16(const int8_t* wr, int64_t i) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + i))));
}

template <int M, class W>
__attribute__((target("avx512f"))) void gemv_rows512(const float* x, int64_t k, const W* w, const float* row_scale,
                                                     const float* bias, int64_t r0, int64_t r1, float* y, int64_t n) {
  constexpr int U = M >= 4 ? 1 : (M == 1 ? 4 : 2);
  const int64_t k16 = k / 16 * 16, ku = k / (16 * U) * (16 * U);
  for (int64_t r = r0; r < r1; ++r) {
    const W* wr = w + r * k;
    __m512 acc[U][M];
    for (int u = 0; u < U; ++u)
      for (int t = 0; t < M; ++t) acc[u][t] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i < ku; i += 16 * U) {
      for (int u = 0; u < U; ++u) {
        const __m512 wv = load16(wr, i + 16 * u);
        for (int t = 0; t < M; ++t)
          acc[u][t] = _mm512_fmadd_ps(_mm512_loadu_ps(x + t * k + i + 16 * u), wv, acc[u][t]);
      }
    }
    for (; i < k16; i += 16) {
      const __m512 wv = load16(wr, i);
      for (int t = 0; t < M; ++t) acc[0][t] = _mm512_fmadd_ps(_mm512_loadu_ps(x + t * k + i), wv, acc[0][t]);
    }
    for (int t = 0; t < M; ++t) {
      __m512 sum = acc[0][t];
      for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u][t]);
      float v = _mm512_reduce_add_ps(sum);
      for (int64_t j = k16; j < k; ++j) v += x[t * k + j] * static_cast<float>(wr[j]);
      if (row_scale) v *= row_scale[r];
      y[t * n + r] = bias ? v + bias[r] : v;
    }
  }
}

bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}

// wide: use the AVX512 rows where the CPU has AVX512F (false: the AVX2 rows, so tests reach both).
template <class W>
void gemv(const at::Tensor& x, const W* w, const float* row_scale, const float* bias, int64_t n, at::Tensor& y,
          bool wide_ok) {
  const int64_t m = x.size(0), k = x.size(1);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, (sizeof(W) == 1 ? 131072 : 32768) / std::max<int64_t>(k, 1));
  const bool wide = wide_ok && has_avx512();
  at::parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
    if (wide) {
      switch (m) {
        case 1: gemv_rows512<1>(xp, k, w, row_scale, bias, r0, r1, yp, n); break;
        case 2: gemv_rows512<2>(xp, k, w, row_scale, bias, r0, r1, yp, n); break;
        case 3: gemv_rows512<3>(xp, k, w, row_scale, bias, r0, r1, yp, n); break;
        case 4: gemv_rows512<4>(xp, k, w, row_scale, bias, r0, r1, yp, n); break;
        case 5: gemv_rows512<5>(xp, k, w, row_scale, bias, r0, r1, yp, n); break;
        case 6: gemv_rows512<6>(xp, k, w, row_scale, bias, r0, r1, yp, n); break;
        case 7: gemv_rows512<7>(xp, k, w, row_scale, bias, r0, r1, yp, n); break;
        default: gemv_rows512<8>(xp, k, w, row_scale, bias, r0, r1, yp, n); break;
      }
      return;
    }
    switch (m) {
      case 1: gemv_rows<1>(xp, k, w, row_scale, bias, r0, r1, yp, n); break;
      case 2: gemv_rows<2>(xp, k, w, row_scale, bias, r0, r1, yp, n); break;
      case 3: gemv_rows<3>(xp, k, w, row_scale, bias, r0, r1, yp, n); break;
      case 4: gemv_rows<4>(xp, k, w, row_scale, bias, r0, r1, yp, n); break;
      case 5: gemv_rows<5>(xp, k, w, row_scale, bias, r0, r1, yp, n); break;
      case 6: gemv_rows<6>(xp, k, w, row_scale, bias, r0, r1, yp, n); break;
      case 7: gemv_rows<7>(xp, k, w, row_scale, bias, r0, r1, yp, n); break;
      default: gemv_rows<8>(xp, k, w, row_scale, bias, r0, r1, yp, n); break;
    }
  });
}

at::Tensor few_token_linear(const at::Tensor& x, const at::Tensor& weight, bool wide) {
  check_float(x, "few_token_linear", 2);
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat && weight.is_contiguous() &&
                  weight.device().is_cpu() && weight.size(1) == x.size(1),
              "llmpack_avx2::few_token_linear: weight must be a contiguous float32 CPU matrix [out, in]");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= 8, "llmpack_avx2::few_token_linear: 1 to 8 tokens");
  at::Tensor y = at::empty({x.size(0), weight.size(0)}, x.options());
  gemv(x, weight.data_ptr<float>(), nullptr, nullptr, weight.size(0), y, wide);
  return y;
}

// Weight-only int8 for 1 to 8 tokens: y = x (W * w_scale)^T (+ bias) with float activations.
at::Tensor w8a16(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& w_scale,
                 const std::optional<at::Tensor>& bias, bool wide) {
  check_float(x, "w8a16", 2);
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar && weight.is_contiguous() &&
                  weight.device().is_cpu() && weight.size(1) == x.size(1),
              "llmpack_avx2::w8a16: weight must be a contiguous int8 CPU matrix [out, in] of the input size");
  const int64_t n = weight.size(0);
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.is_contiguous() && w_scale.numel() == n,
              "llmpack_avx2::w8a16: w_scale must be a contiguous float32 vector of the output size");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == n,
                "llmpack_avx2::w8a16: bias must be a contiguous float32 vector of the output size");
  }
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= 8, "llmpack_avx2::w8a16: 1 to 8 tokens");
  at::Tensor y = at::empty({x.size(0), n}, x.options());
  gemv(x, weight.data_ptr<int8_t>(), w_scale.data_ptr<float>(), bias_ptr(bias), n, y, wide);
  return y;
}

}  // namespace

TORCH_LIBRARY(llmpack_avx2, m) {
  m.def("pack(Tensor weight) -> (Tensor, Tensor)");
  m.def("w8a8(Tensor x, Tensor[] packed, Tensor[] corr, Tensor[] w_scale, Tensor?[] bias, int act_bits=8) -> Tensor[]");
  m.def("w8a8_vnni(Tensor x, Tensor[] packed, Tensor[] corr, Tensor[] w_scale, Tensor?[] bias) -> Tensor[]");
  m.def("w8a16(Tensor x, Tensor weight, Tensor w_scale, Tensor? bias, bool wide=True) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("few_token_linear(Tensor x, Tensor weight, bool wide=True) -> Tensor");
  m.def("quantize_rows(Tensor x) -> (Tensor, Tensor)");
  m.def("int_mm_epilogue(Tensor acc, Tensor tok_scale, Tensor w_scale, Tensor? bias) -> Tensor");
  m.def("gelu_tanh(Tensor x) -> Tensor");
  m.def("silu_mul(Tensor g, Tensor u) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmpack_avx2, CPU, m) {
  m.impl("pack", &pack);
  m.impl("w8a8", &w8a8);
  m.impl("w8a8_vnni", &w8a8_vnni);
  m.impl("w8a16", &w8a16);
  m.impl("rms_norm", &rms_norm);
  m.impl("few_token_linear", &few_token_linear);
  m.impl("quantize_rows", &quantize_rows);
  m.impl("int_mm_epilogue", &int_mm_epilogue);
  m.impl("gelu_tanh", &gelu_tanh);
  m.impl("silu_mul", &silu_mul);
}
