// attention_naive_forward_cuda (kernels/attention_naive.cu) against its CPU twin attention_forward_ref, both fp32,
// over head dims the flash kernel does not compile (8 = stories260K, 16 = the tiny preset, 24, 96, 200) and the
// ends of the range (1, 512), GQA groups 1..8, packed batches with lengths 1, odd lengths, an empty sequence and
// sequences longer than the 128-thread block (several key chunks per row).
//
// Tolerance. Both compute the same fp32 softmax; they differ in the order of the sums (dot products over D, the
// exp sum over the keys, the P·V sum) and in exp (expf within 2 ulp, Eigen's vectorized exp within a few). An
// error δ in a score moves the output by at most ~δ·max|v| (softmax weights are Lipschitz-1 in the scores, in the
// max norm, up to the factor 2), and the score's error is a few ulps of the magnitude of its terms,
// S1 = scale·Σ_d |q_d|·|k_d|. The sums over keys add ~sqrt(keys) ulps of their magnitude. Hence, per row and head:
//   |Δout| <= kU · kAttnUlps · (1 + S1max + sqrt(keys)) · max|v|,   |Δlse| <= kU · kAttnUlps · (1 + S1max + |lse|
//   + sqrt(keys)),
// with kU = 2^-24 and S1max, max|v| over the whole case (a uniform bound: simpler, and loose only by the spread of
// the inputs, which are N(0, 1)). Outputs carry guard elements. Every test skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/attention.h"
#include "kernels/attention_naive.h"
#include "kernels/cuda_check.cuh"
#include "tests/gpu/gpu_test.h"
#include "tests/support/test_errors.h"

namespace qwenq {
namespace {

using test::DeviceBuffer;
using test::error_of;

constexpr double kU = 1.0 / 16777216.0;
constexpr double kAttnUlps = 16;
constexpr size_t kGuard = 16;
constexpr uint32_t kGuardBits = 0x7fc5a5a5u;

float guard_value() {
  float f;
  std::memcpy(&f, &kGuardBits, 4);
  return f;
}

struct NaiveCase {
  std::vector<int32_t> lengths;
  int64_t H, Hkv, D;
};

std::string describe(const NaiveCase& c) {
  std::ostringstream os;
  os << "lengths {";
  for (size_t i = 0; i < c.lengths.size(); ++i) os << (i ? "," : "") << c.lengths[i];
  os << "} H=" << c.H << " Hkv=" << c.Hkv << " D=" << c.D;
  return os.str();
}

void PrintTo(const NaiveCase& c, std::ostream* os) { *os << describe(c); }

std::string case_name(const ::testing::TestParamInfo<NaiveCase>& info) {
  const NaiveCase& c = info.param;
  std::string name = "H" + std::to_string(c.H) + "_Hkv" + std::to_string(c.Hkv) + "_D" + std::to_string(c.D) + "_len";
  for (size_t i = 0; i < c.lengths.size(); ++i) name += (i ? "_" : "") + std::to_string(c.lengths[i]);
  return name;
}

// A case's packed batch (cu_seqlens over its lengths, T tokens), its seed (seed_base + a hash of the shape), the
// context of its failure messages, and its generator.
struct Batch {
  std::vector<int32_t> cu{0};
  int64_t T = 0, n_seqs = 0;
  uint64_t seed = 0;
  std::string ctx;
  Rng rng{0};

  Batch(const NaiveCase& c, uint64_t seed_base) {
    for (int32_t len : c.lengths) cu.push_back(cu.back() + len);
    T = cu.back();
    n_seqs = static_cast<int64_t>(c.lengths.size());
    seed = seed_base + static_cast<uint64_t>(T * 131 + c.H * 17 + c.Hkv * 5 + c.D);
    ctx = describe(c) + " seed " + std::to_string(seed);
    rng = Rng(seed);
  }
  // The next n standard normals of the generator.
  std::vector<float> normal(size_t n) {
    std::vector<float> v(n);
    for (auto& f : v) f = static_cast<float>(rng.normal());
    return v;
  }
};

// The index of the first of got[n..] that is not the guard value, or got.size() when all are intact.
size_t first_overwritten_guard(const std::vector<float>& got, size_t n) {
  for (size_t i = n; i < got.size(); ++i) {
    uint32_t b;
    std::memcpy(&b, &got[i], 4);
    if (b != kGuardBits) return i;
  }
  return got.size();
}

class AttentionNaiveCuda : public ::testing::TestWithParam<NaiveCase> {};

TEST_P(AttentionNaiveCuda, MatchesAttentionForwardRef) {
  QWENQ_REQUIRE_GPU();
  const NaiveCase& c = GetParam();
  Batch batch(c, 31000);
  const std::vector<int32_t>& cu = batch.cu;
  const int64_t T = batch.T, n_seqs = batch.n_seqs;
  const std::string& ctx = batch.ctx;
  const size_t nq = static_cast<size_t>(T * c.H * c.D), nkv = static_cast<size_t>(T * c.Hkv * c.D);
  const std::vector<float> q = batch.normal(nq), k = batch.normal(nkv), v = batch.normal(nkv);
  std::vector<float> out_ref(nq), lse_ref(static_cast<size_t>(T * c.H));
  attention_forward_ref(q.data(), k.data(), v.data(), cu.data(), n_seqs, c.H, c.Hkv, c.D, out_ref.data(),
                        lse_ref.data());

  DeviceBuffer<float> d_q(q), d_k(k), d_v(v);
  DeviceBuffer<float> d_out(std::vector<float>(nq + kGuard, guard_value()));
  DeviceBuffer<float> d_lse(std::vector<float>(static_cast<size_t>(T * c.H) + kGuard, guard_value()));
  attention_naive_forward_cuda(d_q.get(), d_k.get(), d_v.get(), cu.data(), n_seqs, c.H, c.Hkv, c.D, d_out.get(),
                               d_lse.get());
  QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> out = d_out.download(), lse = d_lse.download();

  // The magnitudes of the bound (see the file comment).
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
  double s1max = 0, vmax = 0;
  for (float f : v) vmax = std::max(vmax, static_cast<double>(std::fabs(f)));
  const int64_t group = c.H / c.Hkv;
  int32_t longest = 0;
  for (int32_t len : c.lengths) longest = std::max(longest, len);
  for (int64_t s = 0; s < n_seqs; ++s) {
    for (int64_t i = cu[s]; i < cu[s + 1]; ++i) {
      for (int64_t h = 0; h < c.H; ++h) {
        for (int64_t j = cu[s]; j <= i; ++j) {
          double s1 = 0;
          for (int64_t d = 0; d < c.D; ++d) {
            s1 += std::fabs(q[(i * c.H + h) * c.D + d]) * std::fabs(k[(j * c.Hkv + h / group) * c.D + d]);
          }
          s1max = std::max(s1max, s1 * scale);
        }
      }
    }
  }
  const double spread = 1 + s1max + std::sqrt(static_cast<double>(longest));
  const double tol_out = kU * kAttnUlps * spread * vmax;
  size_t bad = 0;
  double worst = 0;
  for (size_t i = 0; i < nq; ++i) {
    const double e = std::fabs(static_cast<double>(out[i]) - out_ref[i]);
    worst = std::max(worst, e / tol_out);
    if (!(e <= tol_out) && bad++ < 5) {
      ADD_FAILURE() << ctx << ": out[" << i << "] = " << out[i] << ", ref " << out_ref[i] << " (tol " << tol_out << ")";
    }
  }
  for (size_t i = 0; i < lse_ref.size(); ++i) {
    const double tol = kU * kAttnUlps * (spread + std::fabs(lse_ref[i]));
    const double e = std::fabs(static_cast<double>(lse[i]) - lse_ref[i]);
    if (!(e <= tol) && bad++ < 5) {
      ADD_FAILURE() << ctx << ": lse[" << i << "] = " << lse[i] << ", ref " << lse_ref[i] << " (tol " << tol << ")";
    }
  }
  EXPECT_EQ(bad, 0u) << ctx << ": worst out error / tolerance " << worst;
  const size_t out_guard = first_overwritten_guard(out, nq);
  ASSERT_EQ(out_guard, out.size()) << ctx << ": out guard " << out_guard - nq;
  const size_t lse_guard = first_overwritten_guard(lse, lse_ref.size());
  ASSERT_EQ(lse_guard, lse.size()) << ctx << ": lse guard " << lse_guard - lse_ref.size();
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionNaiveCuda,
    ::testing::Values(NaiveCase{{1}, 1, 1, 1}, NaiveCase{{1, 7, 33}, 4, 2, 16},      // the tiny preset's batch
                      NaiveCase{{256, 256}, 8, 4, 8},                                  // stories260K's heads
                      NaiveCase{{5, 0, 129, 3}, 6, 2, 24},                             // an empty sequence
                      NaiveCase{{300}, 8, 1, 96}, NaiveCase{{17, 2}, 3, 3, 200},
                      NaiveCase{{130, 1}, 2, 1, 512}, NaiveCase{{64, 65}, 14, 2, 64}),  // flash's D works too
    case_name);

// attention_naive_backward_cuda against attention_backward_ref, both fp32, on the forward's shapes. The ref's
// P = exp(S − lse) uses the ref's lse on both sides (the backward is tested, not the forward again). Each gradient
// is a sum of up to keys·(H/Hkv) products whose factors carry the score errors of the forward test, so the
// tolerance is relative to the tensor's max |value|: kBwdRelTol = 1e-4, ~100x the 2^-24·sqrt(terms)·spread
// rounding noise of these sizes (exact-arithmetic bugs — a missed key, a wrong head — show up as O(1) errors).
constexpr double kBwdRelTol = 1e-4;

// attention_naive_backward_cuda on host inputs (the forward's out and lse given); dq, dk, dv downloaded, each with
// kGuard guard elements after it.
struct NaiveGrads {
  std::vector<float> dq, dk, dv;
};

NaiveGrads naive_backward_on_device(const NaiveCase& c, const Batch& batch, const std::vector<float>& dout,
                                    const std::vector<float>& q, const std::vector<float>& k,
                                    const std::vector<float>& v, const std::vector<float>& out,
                                    const std::vector<float>& lse) {
  DeviceBuffer<float> d_q(q), d_k(k), d_v(v), d_out(out), d_lse(lse), d_dout(dout);
  DeviceBuffer<float> d_dq(std::vector<float>(q.size() + kGuard, guard_value()));
  DeviceBuffer<float> d_dk(std::vector<float>(k.size() + kGuard, guard_value()));
  DeviceBuffer<float> d_dv(std::vector<float>(v.size() + kGuard, guard_value()));
  attention_naive_backward_cuda(d_dout.get(), d_q.get(), d_k.get(), d_v.get(), d_out.get(), d_lse.get(),
                                batch.cu.data(), batch.n_seqs, c.H, c.Hkv, c.D, d_dq.get(), d_dk.get(), d_dv.get());
  QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
  return {d_dq.download(), d_dk.download(), d_dv.download()};
}

class AttentionNaiveBackwardCuda : public ::testing::TestWithParam<NaiveCase> {};

TEST_P(AttentionNaiveBackwardCuda, MatchesAttentionBackwardRef) {
  QWENQ_REQUIRE_GPU();
  const NaiveCase& c = GetParam();
  Batch batch(c, 47000);
  const std::vector<int32_t>& cu = batch.cu;
  const int64_t T = batch.T, n_seqs = batch.n_seqs;
  const std::string& ctx = batch.ctx;
  const size_t nq = static_cast<size_t>(T * c.H * c.D), nkv = static_cast<size_t>(T * c.Hkv * c.D);
  const std::vector<float> q = batch.normal(nq), k = batch.normal(nkv), v = batch.normal(nkv);
  const std::vector<float> dout = batch.normal(nq);
  std::vector<float> out(nq), lse(static_cast<size_t>(T * c.H));
  attention_forward_ref(q.data(), k.data(), v.data(), cu.data(), n_seqs, c.H, c.Hkv, c.D, out.data(), lse.data());
  std::vector<float> dq_ref(nq), dk_ref(nkv), dv_ref(nkv);
  attention_backward_ref(dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), cu.data(), n_seqs, c.H,
                         c.Hkv, c.D, dq_ref.data(), dk_ref.data(), dv_ref.data());

  const NaiveGrads g = naive_backward_on_device(c, batch, dout, q, k, v, out, lse);
  const struct {
    const char* name;
    const std::vector<float>& got;
    const std::vector<float>& want;
  } outs[] = {{"dq", g.dq, dq_ref}, {"dk", g.dk, dk_ref}, {"dv", g.dv, dv_ref}};
  for (const auto& o : outs) {
    double mx = 0, worst = 0;
    for (float f : o.want) mx = std::max(mx, static_cast<double>(std::fabs(f)));
    const double tol = kBwdRelTol * std::max(mx, 1e-30);
    size_t bad = 0;
    for (size_t i = 0; i < o.want.size(); ++i) {
      const double e = std::fabs(static_cast<double>(o.got[i]) - o.want[i]);
      worst = std::max(worst, e / tol);
      if (!(e <= tol) && bad++ < 5) {
        ADD_FAILURE() << ctx << ": " << o.name << "[" << i << "] = " << o.got[i] << ", ref " << o.want[i]
                      << " (tol " << tol << ")";
      }
    }
    EXPECT_EQ(bad, 0u) << ctx << ": " << o.name << " worst error / tolerance " << worst;
    const size_t guard = first_overwritten_guard(o.got, o.want.size());
    ASSERT_EQ(guard, o.got.size()) << ctx << ": " << o.name << " guard " << guard - o.want.size();
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionNaiveBackwardCuda,
    ::testing::Values(NaiveCase{{1}, 1, 1, 1}, NaiveCase{{1, 7, 33}, 4, 2, 16}, NaiveCase{{256, 256}, 8, 4, 8},
                      NaiveCase{{5, 0, 129, 3}, 6, 2, 24}, NaiveCase{{300}, 8, 1, 96},
                      NaiveCase{{17, 2}, 3, 3, 200}, NaiveCase{{130, 1}, 2, 1, 512}),
    case_name);

// A NaN score must reach lse as the ref's does. Rows of at most 128 keys give each thread one key, so a NaN key
// (k) is the only key of its thread, whose (m, l) = (−inf, NaN) the block merge once dropped as empty: lse came
// out finite (and a row of NaN q, every score NaN, or a row whose one score is −inf, gave lse −inf). Forward
// only: the NaN pattern of out and lse must be the ref's, the finite values within kNanCaseRelTol of the ref's
// (relative to the tensor's max |value|).
constexpr double kNanCaseRelTol = 1e-4;

// The NaN pattern of got's first want.size() entries must be want's, and the finite values within kNanCaseRelTol
// of want's max |finite value|. Returns the number of NaN in want.
size_t expect_nan_case(const std::string& ctx, const char* name, const std::vector<float>& got,
                       const std::vector<float>& want) {
  double mx = 0;
  size_t nans = 0, bad = 0;
  for (float f : want) {
    if (std::isnan(f)) ++nans;
    else mx = std::max(mx, static_cast<double>(std::fabs(f)));
  }
  for (size_t i = 0; i < want.size(); ++i) {
    const bool ok = std::isnan(want[i]) ? std::isnan(got[i])
                                        : std::fabs(static_cast<double>(got[i]) - want[i]) <= kNanCaseRelTol * mx;
    if (!ok && bad++ < 5) ADD_FAILURE() << ctx << ": " << name << "[" << i << "] = " << got[i] << ", ref " << want[i];
  }
  EXPECT_EQ(bad, 0u) << ctx << ": " << name;
  return nans;
}

TEST(AttentionNaiveCudaNan, NanScoresReachLse) {
  QWENQ_REQUIRE_GPU();
  const NaiveCase c{{7, 33}, 4, 2, 16};
  Batch batch(c, 53000);
  const std::vector<int32_t>& cu = batch.cu;
  const size_t nq = static_cast<size_t>(batch.T * c.H * c.D), nkv = static_cast<size_t>(batch.T * c.Hkv * c.D);
  std::vector<float> q = batch.normal(nq), k = batch.normal(nkv);
  const std::vector<float> v = batch.normal(nkv);
  k[(9 * c.Hkv + 1) * c.D + 2] = NAN;  // key 9 of kv head 1: rows 9..39 of heads 2, 3
  q[(20 * c.H + 0) * c.D + 5] = NAN;   // every score of row 20, head 0
  // Row 7 (its sequence's first: one key) of head 1 scores -inf: q −inf against a positive k (kv head 0).
  q[(7 * c.H + 1) * c.D + 0] = -INFINITY;
  for (int64_t d = 0; d < c.D; ++d) k[(7 * c.Hkv + 0) * c.D + d] = std::fabs(k[(7 * c.Hkv + 0) * c.D + d]) + 0.1f;
  std::vector<float> out_ref(nq), lse_ref(static_cast<size_t>(batch.T * c.H));
  attention_forward_ref(q.data(), k.data(), v.data(), cu.data(), batch.n_seqs, c.H, c.Hkv, c.D, out_ref.data(),
                        lse_ref.data());
  DeviceBuffer<float> d_q(q), d_k(k), d_v(v), d_out{std::vector<float>(nq)}, d_lse{std::vector<float>(lse_ref.size())};
  attention_naive_forward_cuda(d_q.get(), d_k.get(), d_v.get(), cu.data(), batch.n_seqs, c.H, c.Hkv, c.D,
                               d_out.get(), d_lse.get());
  QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_GT(expect_nan_case(batch.ctx, "out", d_out.download(), out_ref), 0u) << batch.ctx << ": the ref has no NaN out";
  EXPECT_GT(expect_nan_case(batch.ctx, "lse", d_lse.download(), lse_ref), 0u) << batch.ctx << ": the ref has no NaN lse";
}

// The backward keeps NaN causal as the ref does (kernels/attention.h): a NaN in one row of q, k, v or dout reaches
// exactly the ref's NaN entries of dq, dk and dv (the ref's pattern is that of plain causal loops,
// tests/test_kernels_backward.cpp AttentionNanStaysCausal), the finite ones within kNanCaseRelTol. Row 9 of the
// second sequence (rows 7..39): the rows before it in its 32-row block must stay clean.
TEST(AttentionNaiveCudaNan, BackwardNanStaysCausal) {
  QWENQ_REQUIRE_GPU();
  const NaiveCase c{{7, 33}, 4, 2, 16};
  const int64_t row = 9;
  for (const char* which : {"q", "k", "v", "dout"}) {
    Batch batch(c, 54000);
    const std::vector<int32_t>& cu = batch.cu;
    const size_t nq = static_cast<size_t>(batch.T * c.H * c.D), nkv = static_cast<size_t>(batch.T * c.Hkv * c.D);
    std::vector<float> q = batch.normal(nq), k = batch.normal(nkv), v = batch.normal(nkv), dout = batch.normal(nq);
    const std::string w = which, ctx = batch.ctx + " NaN in " + w + " row 9";
    if (w == "q") q[(row * c.H + 1) * c.D + 3] = NAN;
    if (w == "k") k[(row * c.Hkv + 1) * c.D + 3] = NAN;
    if (w == "v") v[(row * c.Hkv + 1) * c.D + 3] = NAN;
    if (w == "dout") dout[(row * c.H + 1) * c.D + 3] = NAN;
    std::vector<float> out(nq), lse(static_cast<size_t>(batch.T * c.H)), dq_ref(nq), dk_ref(nkv), dv_ref(nkv);
    attention_forward_ref(q.data(), k.data(), v.data(), cu.data(), batch.n_seqs, c.H, c.Hkv, c.D, out.data(),
                          lse.data());
    attention_backward_ref(dout.data(), q.data(), k.data(), v.data(), out.data(), lse.data(), cu.data(), batch.n_seqs,
                           c.H, c.Hkv, c.D, dq_ref.data(), dk_ref.data(), dv_ref.data());
    const NaiveGrads g = naive_backward_on_device(c, batch, dout, q, k, v, out, lse);
    const size_t ref_nans = expect_nan_case(ctx, "dq", g.dq, dq_ref) + expect_nan_case(ctx, "dk", g.dk, dk_ref) +
                            expect_nan_case(ctx, "dv", g.dv, dv_ref);
    EXPECT_GT(ref_nans, 0u) << ctx << ": the ref has no NaN gradient";
  }
}

// cu_seqlens is host memory the caller may reuse once the launcher returns, the stream still busy (the decoder
// passes a local array): the launchers copy it into memory of their own that lives until the upload has run
// (kernels/cuda_check.cuh: upload_owned_async). The caller's array is overwritten with another valid packing (one
// sequence) right after each call; the results must be those of the packing passed, bit for bit.
TEST(AttentionNaiveCudaStreams, CuSeqlensMayBeReusedOnceTheLauncherReturns) {
  QWENQ_REQUIRE_GPU();
  const NaiveCase c{{5, 130, 1}, 4, 2, 16};
  Batch batch(c, 55000);
  const size_t nq = static_cast<size_t>(batch.T * c.H * c.D), nkv = static_cast<size_t>(batch.T * c.Hkv * c.D);
  const size_t nl = static_cast<size_t>(batch.T * c.H);
  const std::vector<float> q = batch.normal(nq), k = batch.normal(nkv), v = batch.normal(nkv), dout = batch.normal(nq);
  const std::vector<int32_t> one_sequence = {0, static_cast<int32_t>(batch.T), static_cast<int32_t>(batch.T),
                                             static_cast<int32_t>(batch.T)};
  DeviceBuffer<float> d_q(q), d_k(k), d_v(v), d_dout(dout);
  DeviceBuffer<float> out_a(nq), lse_a(nl), out_b(nq), lse_b(nl);
  DeviceBuffer<float> dq_a(nq), dk_a(nkv), dv_a(nkv), dq_b(nq), dk_b(nkv), dv_b(nkv);
  // reuse: each call's array is overwritten as soon as the call returns (the forward's and the backward's apart).
  const auto run = [&](bool reuse, float* out, float* lse, float* dq, float* dk, float* dv) {
    std::vector<int32_t> cu_fwd = batch.cu, cu_bwd = batch.cu;
    attention_naive_forward_cuda(d_q.get(), d_k.get(), d_v.get(), cu_fwd.data(), batch.n_seqs, c.H, c.Hkv, c.D, out,
                                 lse);
    if (reuse) cu_fwd = one_sequence;
    attention_naive_backward_cuda(d_dout.get(), d_q.get(), d_k.get(), d_v.get(), out, lse, cu_bwd.data(),
                                  batch.n_seqs, c.H, c.Hkv, c.D, dq, dk, dv);
    if (reuse) cu_bwd = one_sequence;
    QWENQ_CUDA_CHECK(cudaDeviceSynchronize());
  };
  run(false, out_a.get(), lse_a.get(), dq_a.get(), dk_a.get(), dv_a.get());
  run(true, out_b.get(), lse_b.get(), dq_b.get(), dk_b.get(), dv_b.get());
  EXPECT_TRUE(out_b.download() == out_a.download()) << batch.ctx << ": out";
  EXPECT_TRUE(lse_b.download() == lse_a.download()) << batch.ctx << ": lse";
  EXPECT_TRUE(dq_b.download() == dq_a.download()) << batch.ctx << ": dq";
  EXPECT_TRUE(dk_b.download() == dk_a.download()) << batch.ctx << ": dk";
  EXPECT_TRUE(dv_b.download() == dv_a.download()) << batch.ctx << ": dv";
}

TEST(AttentionNaiveCudaErrors, RefusesWhatItCannotRun) {
  QWENQ_REQUIRE_GPU();
  const int32_t cu[] = {0, 4};
  const int32_t bad_cu[] = {0, 4, 2};
  float f = 0.f;
  EXPECT_NE(error_of([&] { attention_naive_forward_cuda(&f, &f, &f, cu, 1, 4, 2, 1024, &f, nullptr); })
                .find("head dim D=1024 exceeds the naive kernel's limit 512"),
            std::string::npos);
  EXPECT_NE(error_of([&] { attention_naive_forward_cuda(&f, &f, &f, cu, 1, 3, 2, 8, &f, nullptr); })
                .find("query heads H=3 must be a multiple of kv heads Hkv=2"),
            std::string::npos);
  EXPECT_NE(error_of([&] { attention_naive_forward_cuda(&f, &f, &f, bad_cu, 2, 4, 2, 8, &f, nullptr); })
                .find("cu_seqlens must be non-decreasing, got 4 then 2 at sequence 1"),
            std::string::npos);
}

}  // namespace
}  // namespace qwenq
