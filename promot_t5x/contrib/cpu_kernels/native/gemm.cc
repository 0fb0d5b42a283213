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
// threaded BLAS (oneMKL, bound by `promot_set_dense_blas`), called from one
// dedicated thread (`BlasThread`), whose own threads share it out: the dense
// layers' products are large enough that the BLAS's partitioning (shared
// packed panels) beats splitting them over XLA's pool.
//
// `PromotAttentionFwd` / `PromotAttentionBwd` are attention's whole inner part
// for one (batch, head) at a time, on XLA's pool as above: scores Q K^T, plus
// an additive bias, softmax, times V; and its gradient. Each unit's scores
// stay in the cache between its products and its softmax (XLA ran them as
// separate passes over [batch, heads, q, k] arrays).

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include <unistd.h>

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

// Runs fn(unit) for unit < units over the calling thread and up to
// pool.num_threads() - 1 helpers (claimed from a counter; see the top).
template <typename Fn>
void ForUnits(ffi::ThreadPool& pool, int64_t units, Fn fn) {
  struct State {
    Fn fn;
    int64_t units;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    explicit State(Fn f, int64_t n) : fn(std::move(f)), units(n) {}
    void Work() {
      for (int64_t u; (u = next.fetch_add(1)) < units;) {
        fn(u);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  auto state = std::make_shared<State>(std::move(fn), units);
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t helpers = std::min(threads, units) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([state] { state->Work(); });
  state->Work();
  while (state->done.load(std::memory_order_acquire) < units) std::this_thread::yield();
}

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
  Problem p{a.typed_data(), b.typed_data(), c->typed_data(), nb1, m, n, k,
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
  ForUnits(pool, p.units, [p](int64_t unit) { RunUnit(p, unit); });
  return ffi::Error::Success();
}

// One thread makes every threaded-BLAS call (`Dense`); the calling XLA thread
// waits. With the calls made from whichever XLA thread runs the custom call,
// oneMKL on oneTBB ran the same products slower inside a jitted program than
// from one thread (bench/README.md, "One thread for oneMKL's calls").
// Calls from several XLA threads at once queue here and run one at a time.
// The primitives are never destroyed (a static destructor would wait on the
// thread's condition variable at exit); a forked child starts its own thread.
class BlasThread {
 public:
  static void Run(const std::function<void()>& fn) {
    static std::mutex* once = new std::mutex;
    static BlasThread* current = nullptr;
    BlasThread* t;
    {
      std::lock_guard<std::mutex> lock(*once);
      if (current == nullptr || current->pid_ != getpid()) current = new BlasThread;
      t = current;
    }
    t->Call(fn);
  }

 private:
  BlasThread() : pid_(getpid()) { std::thread([this] { Loop(); }).detach(); }

  void Call(const std::function<void()>& fn) {
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait(lock, [this] { return job_ == nullptr; });  // one call at a time
    job_ = &fn;
    done_ = false;
    work_.notify_one();
    finished_.wait(lock, [this] { return done_; });
    job_ = nullptr;
    idle_.notify_one();
  }

  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      work_.wait(lock, [this] { return job_ != nullptr && !done_; });
      const std::function<void()>* job = job_;
      lock.unlock();
      (*job)();
      lock.lock();
      done_ = true;
      finished_.notify_one();
    }
  }

  const pid_t pid_;
  std::mutex mu_;
  std::condition_variable work_, finished_, idle_;
  const std::function<void()>* job_ = nullptr;
  bool done_ = false;
};

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
  BlasThread::Run([&] {
    sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans,
          m, n, k, 1.0f, a.typed_data(), trans_a ? m : k, b.typed_data(),
          trans_b ? k : n, 0.0f, c->typed_data(), n);
  });
  return ffi::Error::Success();
}

constexpr int kLanes = 16;

// exp(x) to about 1 ulp (Cephes' expf: x = n ln2 + r, a degree-6 polynomial in
// r, times 2^n); 0 below -87 (where float32's exp is subnormal or 0; masked
// scores sit at about -1e10). Written so that the compiler vectorizes it
// (cpu_kernels builds with -fno-trapping-math, which lets it compute both
// sides of a select).
inline float ExpF(float x) {
  const float c = x < 88.0f ? x : 88.0f;
  const float n = __builtin_floorf(c * 1.44269504088896341f + 0.5f);
  float r = c - n * 0.693359375f;
  r -= n * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n > -126.0f ? n : -126.0f) + 127) << 23;
  const float e = y * __builtin_bit_cast(float, bits);
  return x < -87.0f ? 0.0f : e;
}

// row[j] = softmax(row + bias)[j] in place, for one row of n scores.
__attribute__((target_clones("avx512f", "avx2", "default")))
void SoftmaxRow(float* row, const float* bias, int64_t n) {
  if (bias != nullptr) {
    for (int64_t j = 0; j < n; ++j) row[j] += bias[j];
  }
  float lanes[kLanes];
  for (int l = 0; l < kLanes; ++l) lanes[l] = -INFINITY;
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] = row[j + l] > lanes[l] ? row[j + l] : lanes[l];
  }
  float top = -INFINITY;
  for (int l = 0; l < kLanes; ++l) top = std::max(top, lanes[l]);
  for (; j < n; ++j) top = std::max(top, row[j]);
  for (int64_t i = 0; i < n; ++i) row[i] = ExpF(row[i] - top);
  for (int l = 0; l < kLanes; ++l) lanes[l] = 0.0f;
  j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += row[j + l];
  }
  float sum = 0.0f;
  for (int l = 0; l < kLanes; ++l) sum += lanes[l];
  for (; j < n; ++j) sum += row[j];
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) row[i] *= inv;
}

// ds[j] = p[j] * (dp[j] - sum_j p[j] dp[j]) in place over dp, for one row.
__attribute__((target_clones("avx512f", "avx2", "default")))
void SoftmaxGradRow(const float* p, float* dp, int64_t n) {
  float lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += p[j + l] * dp[j + l];
  }
  float dot = 0.0f;
  for (int l = 0; l < kLanes; ++l) dot += lanes[l];
  for (; j < n; ++j) dot += p[j] * dp[j];
  for (int64_t i = 0; i < n; ++i) dp[i] = p[i] * (dp[i] - dot);
}

// Shapes of one attention call: q [b, lq, h, d], k and v [b, lk, h, d],
// probabilities [b, h, lq, lk], bias [bb, hb, lq, lk] with bb in {1, b} and
// hb in {1, h} (broadcast), or none.
struct Attention {
  int64_t b, lq, lk, h, d;
  int64_t bias_b, bias_h;  // element strides of the bias's batch and head; 0 broadcasts
  bool has_bias;

  const float* Rows(const float* x, int64_t length, int64_t unit) const {
    return x + (unit / h) * length * h * d + (unit % h) * d;  // [length, d] at stride h*d
  }
  float* Rows(float* x, int64_t length, int64_t unit) const {
    return x + (unit / h) * length * h * d + (unit % h) * d;
  }
  int64_t ProbsOffset(int64_t unit) const { return unit * lq * lk; }  // unit = batch * h + head
};

ffi::Error CheckAttention(const Attention& a, size_t q, size_t k, size_t v, size_t bias) {
  if (g_sgemm.load() == nullptr) {
    return ffi::Error::Internal(
        "promot_attention: no BLAS bound; call promot_t5x.cpu_kernels.load() first");
  }
  const size_t qn = a.b * a.lq * a.h * a.d, kn = a.b * a.lk * a.h * a.d;
  if (q != qn || k != kn || v != kn) {
    return ffi::Error::InvalidArgument("promot_attention: q/k/v sizes do not match b, lq, lk, h, d");
  }
  if (a.has_bias && bias == 0) {
    return ffi::Error::InvalidArgument("promot_attention: has_bias but the bias is empty");
  }
  return ffi::Error::Success();
}

ffi::Error AttentionFwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                        ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                        ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> out,
                        ffi::ResultBuffer<ffi::F32> probs, int64_t b, int64_t lq,
                        int64_t lk, int64_t h, int64_t d, int64_t bias_b, int64_t bias_h,
                        bool has_bias) {
  const Attention a{b, lq, lk, h, d, bias_b, bias_h, has_bias};
  if (ffi::Error e = CheckAttention(a, q.element_count(), k.element_count(),
                                    v.element_count(), bias.element_count());
      e.failure()) {
    return e;
  }
  if (b * h * lq == 0) return ffi::Error::Success();
  const Sgemm sgemm = g_sgemm.load();
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const float* bp = has_bias ? bias.typed_data() : nullptr;
  float *op = out->typed_data(), *pp = probs->typed_data();
  const int64_t ld = h * d;
  ForUnits(pool, b * h, [=](int64_t unit) {
    float* p = pp + a.ProbsOffset(unit);
    float* o = a.Rows(op, lq, unit);
    if (lk == 0) {  // no keys: a zero context, as an empty sum
      for (int64_t i = 0; i < lq; ++i) std::fill(o + i * ld, o + i * ld + d, 0.0f);
      return;
    }
    sgemm(kRowMajor, kNoTrans, kTrans, lq, lk, d, 1.0f, a.Rows(qp, lq, unit), ld,
          a.Rows(kp, lk, unit), ld, 0.0f, p, lk);
    const float* bias_rows =
        bp == nullptr ? nullptr : bp + (unit / h) * a.bias_b + (unit % h) * a.bias_h;
    for (int64_t i = 0; i < lq; ++i) {
      SoftmaxRow(p + i * lk, bias_rows == nullptr ? nullptr : bias_rows + i * lk, lk);
    }
    sgemm(kRowMajor, kNoTrans, kNoTrans, lq, d, lk, 1.0f, p, lk, a.Rows(vp, lk, unit),
          ld, 0.0f, o, ld);
  });
  return ffi::Error::Success();
}

// Gradients of out = softmax(q k^T + bias) v given d_out: d_q, d_k, d_v, and
// (with_ds) d_scores [b, h, lq, lk], the bias's gradient before any sum over
// the dimensions it broadcasts.
ffi::Error AttentionBwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                        ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                        ffi::Buffer<ffi::F32> probs, ffi::Buffer<ffi::F32> d_out,
                        ffi::ResultBuffer<ffi::F32> d_q, ffi::ResultBuffer<ffi::F32> d_k,
                        ffi::ResultBuffer<ffi::F32> d_v, ffi::ResultBuffer<ffi::F32> d_scores,
                        int64_t b, int64_t lq, int64_t lk, int64_t h, int64_t d,
                        bool with_ds) {
  const Attention a{b, lq, lk, h, d, 0, 0, false};
  if (ffi::Error e = CheckAttention(a, q.element_count(), k.element_count(),
                                    v.element_count(), 0);
      e.failure()) {
    return e;
  }
  if (with_ds && d_scores->element_count() != static_cast<size_t>(b * h * lq * lk)) {
    return ffi::Error::InvalidArgument("promot_attention: d_scores is not [b, h, lq, lk]");
  }
  const size_t qn = b * lq * h * d, kn = b * lk * h * d;
  if (b * h == 0) return ffi::Error::Success();
  if (lq == 0 || lk == 0 || d == 0) {
    std::fill(d_q->typed_data(), d_q->typed_data() + qn, 0.0f);
    std::fill(d_k->typed_data(), d_k->typed_data() + kn, 0.0f);
    std::fill(d_v->typed_data(), d_v->typed_data() + kn, 0.0f);
    if (with_ds) std::fill(d_scores->typed_data(), d_scores->typed_data() + b * h * lq * lk, 0.0f);
    return ffi::Error::Success();
  }
  const Sgemm sgemm = g_sgemm.load();
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const float *pp = probs.typed_data(), *gp = d_out.typed_data();
  float *dqp = d_q->typed_data(), *dkp = d_k->typed_data(), *dvp = d_v->typed_data();
  float* dsp = with_ds ? d_scores->typed_data() : nullptr;
  const int64_t ld = h * d;
  ForUnits(pool, b * h, [=](int64_t unit) {
    thread_local std::vector<float> scratch;
    const float* p = pp + a.ProbsOffset(unit);
    const float* g = a.Rows(gp, lq, unit);
    const float* vu = a.Rows(vp, lk, unit);
    float* ds;
    if (dsp != nullptr) {
      ds = dsp + a.ProbsOffset(unit);
    } else {
      if (scratch.size() < static_cast<size_t>(lq * lk)) scratch.resize(lq * lk);
      ds = scratch.data();
    }
    // d_v = p^T g; d_p = g v^T, then the softmax's gradient in place.
    sgemm(kRowMajor, kTrans, kNoTrans, lk, d, lq, 1.0f, p, lk, g, ld, 0.0f,
          a.Rows(dvp, lk, unit), ld);
    sgemm(kRowMajor, kNoTrans, kTrans, lq, lk, d, 1.0f, g, ld, vu, ld, 0.0f, ds, lk);
    for (int64_t i = 0; i < lq; ++i) SoftmaxGradRow(p + i * lk, ds + i * lk, lk);
    // d_q = ds k; d_k = ds^T q.
    sgemm(kRowMajor, kNoTrans, kNoTrans, lq, d, lk, 1.0f, ds, lk, a.Rows(kp, lk, unit), ld,
          0.0f, a.Rows(dqp, lq, unit), ld);
    sgemm(kRowMajor, kTrans, kNoTrans, lk, d, lq, 1.0f, ds, lk, a.Rows(qp, lq, unit), ld,
          0.0f, a.Rows(dkp, lk, unit), ld);
  });
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    PromotAttentionFwd, AttentionFwd,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<ffi::Buffer<ffi::F32>>()  // q
        .Arg<ffi::Buffer<ffi::F32>>()  // k
        .Arg<ffi::Buffer<ffi::F32>>()  // v
        .Arg<ffi::Buffer<ffi::F32>>()  // bias (empty when has_bias is false)
        .Ret<ffi::Buffer<ffi::F32>>()  // out [b, lq, h, d]
        .Ret<ffi::Buffer<ffi::F32>>()  // probabilities [b, h, lq, lk]
        .Attr<int64_t>("b")
        .Attr<int64_t>("lq")
        .Attr<int64_t>("lk")
        .Attr<int64_t>("h")
        .Attr<int64_t>("d")
        .Attr<int64_t>("bias_b")
        .Attr<int64_t>("bias_h")
        .Attr<bool>("has_bias"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    PromotAttentionBwd, AttentionBwd,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<ffi::Buffer<ffi::F32>>()  // q
        .Arg<ffi::Buffer<ffi::F32>>()  // k
        .Arg<ffi::Buffer<ffi::F32>>()  // v
        .Arg<ffi::Buffer<ffi::F32>>()  // probabilities
        .Arg<ffi::Buffer<ffi::F32>>()  // d_out
        .Ret<ffi::Buffer<ffi::F32>>()  // d_q
        .Ret<ffi::Buffer<ffi::F32>>()  // d_k
        .Ret<ffi::Buffer<ffi::F32>>()  // d_v
        .Ret<ffi::Buffer<ffi::F32>>()  // d_scores (empty unless with_ds)
        .Attr<int64_t>("b")
        .Attr<int64_t>("lq")
        .Attr<int64_t>("lk")
        .Attr<int64_t>("h")
        .Attr<int64_t>("d")
        .Attr<bool>("with_ds"));
