#include "device/ffn_engine.hpp"

#include "core/error.hpp"

#ifdef MOESIM_WITH_CUDA
#include <vector>

#include "device/buffer.hpp"
#include "device/kernels.hpp"
#endif

namespace moesim::device {

#ifdef MOESIM_WITH_CUDA

namespace {

// Row-major C (m x n) = op(A) op(B) through cuBLAS's column-major GEMM: C^T = op(B)^T op(A)^T.
// ta / tb: A / B transposed; lda / ldb: their row-major row lengths.
void gemm_rows(cublasHandle_t h, bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k, const float* A,
               std::int64_t lda, const float* B, std::int64_t ldb, float* C, float beta = 0.0f) {
  const float one = 1.0f;
  MOESIM_CUBLAS_CHECK(cublasSgemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                  static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &one, B,
                                  static_cast<int>(ldb), A, static_cast<int>(lda), &beta, C, static_cast<int>(n)));
}

void upload(float* dst, const float* src, std::int64_t n, cudaStream_t s) {
  MOESIM_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(float) * static_cast<std::size_t>(n), cudaMemcpyHostToDevice, s));
}

void download(float* dst, const float* src, std::int64_t n, cudaStream_t s) {
  MOESIM_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(float) * static_cast<std::size_t>(n), cudaMemcpyDeviceToHost, s));
}

}  // namespace

struct FfnEngine::Impl {
  std::int64_t D, F, rows = 0;
  cudaStream_t stream{};
  cublasHandle_t blas{};
  DeviceBuffer<float> w1, b1, w2, b2, x, pre, th, h, y, dy, dpre, dx, gw1, gb1, gw2, gb2;
  std::vector<float> host_grad;  // a block's gradient on its way to be added on the host

  Impl(std::int64_t d, std::int64_t f) : D(d), F(f) {
    MOESIM_CUDA_CHECK(cudaStreamCreate(&stream));
    MOESIM_CUBLAS_CHECK(cublasCreate(&blas));
    MOESIM_CUBLAS_CHECK(cublasSetStream(blas, stream));
    // Plain fp32 products (no TF32), the precision the CPU path is compared at.
    MOESIM_CUBLAS_CHECK(cublasSetMathMode(blas, CUBLAS_PEDANTIC_MATH));
    w1.reserve(static_cast<std::size_t>(D * F));
    w2.reserve(static_cast<std::size_t>(F * D));
    b1.reserve(static_cast<std::size_t>(F));
    b2.reserve(static_cast<std::size_t>(D));
    gw1.reserve(static_cast<std::size_t>(D * F));
    gw2.reserve(static_cast<std::size_t>(F * D));
    gb1.reserve(static_cast<std::size_t>(F));
    gb2.reserve(static_cast<std::size_t>(D));
  }
  ~Impl() {
    cublasDestroy(blas);
    cudaStreamDestroy(stream);
  }

  // The gradient computed on the GPU into `dev`, written or added into the host's `out`.
  void grad_out(const float* dev, std::int64_t n, float* out, bool accumulate) {
    if (!accumulate) {
      download(out, dev, n, stream);
      return;
    }
    host_grad.resize(static_cast<std::size_t>(n));
    download(host_grad.data(), dev, n, stream);
    MOESIM_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (std::int64_t i = 0; i < n; ++i) out[i] += host_grad[static_cast<std::size_t>(i)];
  }
};

FfnEngine::FfnEngine(std::int64_t d_model, std::int64_t d_ff) : impl_(std::make_unique<Impl>(d_model, d_ff)) {}
FfnEngine::~FfnEngine() = default;

void FfnEngine::forward(const float* xin, std::int64_t n, const FfnParams& p, float* yout) {
  Impl& m = *impl_;
  const std::int64_t D = m.D, F = m.F;
  const auto nf = static_cast<std::size_t>(n * F), nd = static_cast<std::size_t>(n * D);
  m.rows = n;
  upload(m.w1.data(), p.w1, D * F, m.stream);
  upload(m.b1.data(), p.b1, F, m.stream);
  upload(m.w2.data(), p.w2, F * D, m.stream);
  upload(m.b2.data(), p.b2, D, m.stream);
  if (n > 0) {
    upload(m.x.reserve(nd), xin, n * D, m.stream);
    m.pre.reserve(nf);
    m.th.reserve(nf);
    m.h.reserve(nf);
    m.y.reserve(nd);
    gemm_rows(m.blas, false, false, n, F, D, m.x.data(), D, m.w1.data(), F, m.pre.data());
    launch_bias_gelu(m.pre.data(), m.b1.data(), m.th.data(), m.h.data(), n, F, m.stream);
    gemm_rows(m.blas, false, false, n, D, F, m.h.data(), F, m.w2.data(), D, m.y.data());
    launch_add_bias(m.y.data(), m.b2.data(), n, D, m.stream);
    download(yout, m.y.data(), n * D, m.stream);
  }
  MOESIM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

void FfnEngine::backward_block(const float* dyin, std::int64_t b, std::int64_t r, float* dxout, const FfnGrads& g,
                               bool accumulate) {
  Impl& m = *impl_;
  const std::int64_t D = m.D, F = m.F;
  MOESIM_REQUIRE(b >= 0 && r >= 0 && b + r <= m.rows,
                 "FfnEngine: rows [" << b << ", " << b + r << ") after a forward of " << m.rows);
  if (r == 0) return;
  const float* xb = m.x.data() + b * D;
  const float* pb = m.pre.data() + b * F;
  const float* tb = m.th.data() + b * F;
  const float* hb = m.h.data() + b * F;
  float* dy = m.dy.reserve(static_cast<std::size_t>(r * D));
  float* dpre = m.dpre.reserve(static_cast<std::size_t>(r * F));
  float* dx = m.dx.reserve(static_cast<std::size_t>(r * D));
  upload(dy, dyin, r * D, m.stream);
  gemm_rows(m.blas, true, false, F, D, r, hb, F, dy, D, m.gw2.data());       // h^T dy
  launch_column_sums(dy, r, D, m.gb2.data(), false, m.stream);
  gemm_rows(m.blas, false, true, r, F, D, dy, D, m.w2.data(), D, dpre);      // dy W2^T
  MOESIM_CUDA_CHECK(cudaMemsetAsync(m.gb1.data(), 0, sizeof(float) * static_cast<std::size_t>(F), m.stream));
  launch_gelu_backward(dpre, pb, tb, m.gb1.data(), r, F, m.stream);
  gemm_rows(m.blas, true, false, D, F, r, xb, D, dpre, F, m.gw1.data());     // x^T dpre
  gemm_rows(m.blas, false, true, r, D, F, dpre, F, m.w1.data(), F, dx);      // dpre W1^T
  download(dxout, dx, r * D, m.stream);
  m.grad_out(m.gw1.data(), D * F, g.w1, accumulate);
  m.grad_out(m.gb1.data(), F, g.b1, accumulate);
  m.grad_out(m.gw2.data(), F * D, g.w2, accumulate);
  m.grad_out(m.gb2.data(), D, g.b2, accumulate);
  MOESIM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

#else

struct FfnEngine::Impl {};

FfnEngine::FfnEngine(std::int64_t, std::int64_t) {
  throw ConfigError("--device cuda: this moesim was built without CUDA (build it with the cuda preset, or -DMOESIM_CUDA=ON)");
}
FfnEngine::~FfnEngine() = default;
void FfnEngine::forward(const float*, std::int64_t, const FfnParams&, float*) {}
void FfnEngine::backward_block(const float*, std::int64_t, std::int64_t, float*, const FfnGrads&, bool) {}

#endif

}  // namespace moesim::device
