// Batched float32 matrix products for XLA:CPU, as an XLA FFI custom call.
//
// C[i, j] = op(A[i, j]) @ op(B[i, j]) for a grid of i < nb0, j < nb1 of
// matrices that sit in their buffers at element strides (so the attention
// products read q/k/v where they lie, without transposes), each product a
// BLAS sgemm (numpy's OpenBLAS, ILP64, bound at load time by
// `promot_set_blas`; cpu_kernels.py loads a private copy of the library set
// to one thread, so numpy's own OpenBLAS keeps its threads). The products, or
// row blocks of them, are shared out over XLA's intra-op thread pool, each
// BLAS call single-threaded: the cores are XLA's, and no second thread pool
// competes for them.
//
// Work is claimed from an atomic counter. The calling thread claims units
// too and waits only for units another thread has already claimed (which
// are running), never for a queued task: no deadlock when every pool thread
// is inside such a call.
//
// `PromotDense` is one plain product, op(A) @ op(B), handed whole to a
// threaded BLAS (oneMKL, bound by `promot_set_dense_blas`), whose own threads
// share it out: the dense layers' products are large enough that the BLAS's
// partitioning (shared packed panels) beats splitting them over XLA's pool.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// cblas_sgemm of an ILP64 OpenBLAS (64-bit integers).
using Sgemm = void (*)(int layout, int trans_a, int trans_b, int64_t m,
                       int64_t n, int64_t k, float alpha, const float* a,
                       int64_t lda, const float* b, int64_t ldb, float beta,
                       float* c, int64_t ldc);

std::atomic<Sgemm> g_sgemm{nullptr};        // single-threaded, per unit
std::atomic<Sgemm> g_dense_sgemm{nullptr};  // threaded, one call per product

constexpr int kRowMajor = 101;
constexpr int kNoTrans = 111;
constexpr int kTrans = 112;

struct Problem {
  const float* a;
  const float* b;
  float* c;
  int64_t nb1, m, n, k;
  bool trans_a, trans_b;
  int64_t lda, ldb, ldc;
  int64_t a_s0, a_s1, b_s0, b_s1, c_s0, c_s1;
  int64_t row_blocks, block_rows, units;
};

void RunUnit(const Problem& p, int64_t unit) {
  const int64_t batch = unit / p.row_blocks;
  const int64_t block = unit % p.row_blocks;
  const int64_t i = batch / p.nb1, j = batch % p.nb1;
  const int64_t r0 = block * p.block_rows;
  const int64_t rows = std::min(p.block_rows, p.m - r0);
  // Rows r0.. of op(A): rows of A, or columns of A when it is transposed.
  const float* a = p.a + i * p.a_s0 + j * p.a_s1 + (p.trans_a ? r0 : r0 * p.lda);
  const float* b = p.b + i * p.b_s0 + j * p.b_s1;
  float* c = p.c + i * p.c_s0 + j * p.c_s1 + r0 * p.ldc;
  g_sgemm.load()(kRowMajor, p.trans_a ? kTrans : kNoTrans,
                 p.trans_b ? kTrans : kNoTrans, rows, p.n, p.k, 1.0f, a, p.lda,
                 b, p.ldb, 0.0f, c, p.ldc);
}

struct Shared {
  Problem problem;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Work() {
    for (int64_t u; (u = next.fetch_add(1)) < problem.units;) {
      RunUnit(problem, u);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error Gemm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a,
                ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> c,
                int64_t nb0, int64_t nb1, int64_t m, int64_t n, int64_t k,
                bool trans_a, bool trans_b, int64_t lda, int64_t ldb,
                int64_t ldc, int64_t a_s0, int64_t a_s1, int64_t b_s0,
                int64_t b_s1, int64_t c_s0, int64_t c_s1, int64_t min_rows) {
  if (g_sgemm.load() == nullptr) {
    return ffi::Error::Internal(
        "promot_gemm: no BLAS bound; call promot_t5x.cpu_kernels.load() first");
  }
  const int64_t batches = nb0 * nb1;
  if (batches == 0 || m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::fill(c->typed_data(), c->typed_data() + c->element_count(), 0.0f);
    return ffi::Error::Success();
  }
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  auto shared = std::make_shared<Shared>();
  Problem& p = shared->problem;
  p = Problem{a.typed_data(), b.typed_data(), c->typed_data(), nb1, m, n, k,
              trans_a, trans_b, lda, ldb, ldc, a_s0, a_s1, b_s0, b_s1, c_s0,
              c_s1, 1, m, 0};
  // Enough units for every thread (two per thread when the batch is small,
  // to even out), but no block under min_rows rows.
  if (batches < 2 * threads) {
    const int64_t want = (2 * threads + batches - 1) / batches;
    const int64_t most = std::max<int64_t>(1, m / std::max<int64_t>(1, min_rows));
    p.row_blocks = std::min(want, most);
    p.block_rows = (m + p.row_blocks - 1) / p.row_blocks;
    p.row_blocks = (m + p.block_rows - 1) / p.block_rows;
  }
  p.units = batches * p.row_blocks;
  const int64_t helpers = std::min(threads, p.units) - 1;
  for (int64_t t = 0; t < helpers; ++t) {
    pool.Schedule([shared] { shared->Work(); });
  }
  shared->Work();
  while (shared->done.load(std::memory_order_acquire) < p.units) {
    std::this_thread::yield();
  }
  return ffi::Error::Success();
}

ffi::Error Dense(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                 ffi::ResultBuffer<ffi::F32> c, int64_t m, int64_t n, int64_t k,
                 bool trans_a, bool trans_b) {
  const Sgemm sgemm = g_dense_sgemm.load();
  if (sgemm == nullptr) {
    return ffi::Error::Internal(
        "promot_dense: no BLAS bound; call promot_t5x.cpu_kernels.load_dense() first");
  }
  if (a.element_count() != m * k || b.element_count() != k * n ||
      c->element_count() != m * n) {
    return ffi::Error::InvalidArgument("promot_dense: operand sizes do not match m, n, k");
  }
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::fill(c->typed_data(), c->typed_data() + c->element_count(), 0.0f);
    return ffi::Error::Success();
  }
  // Row-major, packed: op(A) is [m, k] (A stored [k, m] when transposed).
  sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans,
        m, n, k, 1.0f, a.typed_data(), trans_a ? m : k, b.typed_data(),
        trans_b ? k : n, 0.0f, c->typed_data(), n);
  return ffi::Error::Success();
}

}  // namespace

// `sgemm`: cblas_sgemm of a single-threaded ILP64 OpenBLAS.
extern "C" void promot_set_blas(void* sgemm) {
  g_sgemm.store(reinterpret_cast<Sgemm>(sgemm));
}

// `sgemm`: an ILP64 cblas_sgemm that threads itself (oneMKL's cblas_sgemm_64).
extern "C" void promot_set_dense_blas(void* sgemm) {
  g_dense_sgemm.store(reinterpret_cast<Sgemm>(sgemm));
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    PromotDense, Dense,
    ffi::Ffi::Bind()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>()
        .Attr<int64_t>("m")
        .Attr<int64_t>("n")
        .Attr<int64_t>("k")
        .Attr<bool>("trans_a")
        .Attr<bool>("trans_b"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    PromotGemm, Gemm,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>()
        .Attr<int64_t>("nb0")
        .Attr<int64_t>("nb1")
        .Attr<int64_t>("m")
        .Attr<int64_t>("n")
        .Attr<int64_t>("k")
        .Attr<bool>("trans_a")
        .Attr<bool>("trans_b")
        .Attr<int64_t>("lda")
        .Attr<int64_t>("ldb")
        .Attr<int64_t>("ldc")
        .Attr<int64_t>("a_s0")
        .Attr<int64_t>("a_s1")
        .Attr<int64_t>("b_s0")
        .Attr<int64_t>("b_s1")
        .Attr<int64_t>("c_s0")
        .Attr<int64_t>("c_s1")
        .Attr<int64_t>("min_rows"));
