// CudaBackend against CpuBackend: every ModelBackend method runs on both backends over the same
// seeded inputs and the results are compared: f32 within 1e-4 of the largest magnitude; integer
// results, copies, gathers and casts exactly; the SVDs through their singular values and
// reconstructions (their vectors are defined only up to sign). The model ops run again with bf16
// operands on the device against the f32 CPU result on the same bf16-rounded values, within 2e-2 of
// the largest magnitude. Then the backend's own contract: Create's dtype check, the out-of-memory
// error, zero-element tensors, strided downloads, tensors outliving the backend.
// Skips without a CUDA device, and (one placeholder test) in a build without CUDA.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/testing/gpu.h"

#if SIGMATUNE_WITH_CUDA
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/status_macros.h"
#include "kernels/base/tensor.h"
#include "kernels/model/backend.h"
#include "kernels/model/backend_cuda.h"
#include "kernels/ops/linalg_testing.h"
#include "kernels/testing/compare.h"
#include "kernels/testing/random.h"
#include "kernels/testing/status.h"
#endif

namespace sigmatune::model {
namespace {

#if SIGMATUNE_WITH_CUDA

using kernels::Transpose;
using kernels::testing::Along;
using kernels::testing::OrthonormalityError;
using kernels::testing::ReconstructF64;
using sigmatune::testing::AllClose;
using sigmatune::testing::RandomNormal;
using sigmatune::testing::RandomSmallIntegers;
using sigmatune::testing::RandomUniform;
using sigmatune::testing::RandomWithSingularValues;
using sigmatune::testing::RelativeError;
using sigmatune::testing::Tolerance;

constexpr double kF32Rel = 1e-4;
constexpr double kBf16Rel = 2e-2;
constexpr double kExact = 0.0;

#define ASSERT_OK(expr)                                 \
  do {                                                  \
    const absl::Status assert_status_ = (expr);         \
    ASSERT_TRUE(assert_status_.ok()) << assert_status_; \
  } while (0)

#define ASSERT_OK_AND_ASSIGN(lhs, expr) ASSERT_OK_AND_ASSIGN_IMPL_(ST_CONCAT_(assert_or_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL_(var, lhs, expr) \
  auto var = (expr);                               \
  ASSERT_TRUE(var.ok()) << var.status();           \
  lhs = std::move(var).value()

// One operand of an op under test: its values on the host and the dtype the device run gets them
// in. The CPU run always gets the host dtype, on the same values (a bf16 operand is rounded to bf16
// first), so only the device arithmetic differs.
struct Operand {
  Tensor host;
  DType device_dtype;
};

Operand Same(const Tensor& t) { return {t, t.dtype()}; }
Operand As(const Tensor& t, DType device_dtype) { return {t, device_dtype}; }

Tensor CpuValues(const Operand& o) {
  if (o.device_dtype != o.host.dtype() && o.device_dtype == DType::kBF16) {
    return o.host.To(DType::kBF16).To(o.host.dtype());
  }
  return o.host.Contiguous();  // a copy: the CPU backend's Upload does not copy, and ops write in place
}

// Runs the op on a backend over its own copies of the operands. Outputs are operands too (given
// preallocated, as the model does), so in-place updates are compared like any result.
using Op = std::function<absl::Status(ModelBackend& backend, std::vector<Tensor>& operands)>;

// Max |t| over the finite entries.
double MaxAbs(const Tensor& t) {
  double m = 0.0;
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = std::fabs(GetAsDouble(t, i));
    if (std::isfinite(v)) m = std::max(m, v);
  }
  return m;
}

// got == want within `rel` of want's largest magnitude (and `rel` of each element); 0 is exact.
::testing::AssertionResult Matches(const Tensor& got, const Tensor& want, double rel) {
  return AllClose(got, want, Tolerance{rel * MaxAbs(want), rel});
}

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!sigmatune::testing::GpuAvailable(&why)) GTEST_SKIP() << why;
    auto gpu = CudaBackend::Create(0, DType::kF32);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = std::move(gpu).value();
  }

  // Uploads the operands (in their device dtype on the device backend), runs `op`, and downloads
  // every operand again: floating results as f32 (f64 stays f64), integers as they are.
  absl::StatusOr<std::vector<Tensor>> Run(ModelBackend& backend, const std::vector<Operand>& operands, const Op& op) {
    const bool device = !backend.device().is_cpu();
    std::vector<Tensor> on_backend;
    for (const Operand& o : operands) {
      ST_ASSIGN_OR_RETURN(Tensor t, backend.Upload(device ? o.host.To(o.device_dtype) : CpuValues(o)));
      on_backend.push_back(std::move(t));
    }
    ST_RETURN_IF_ERROR(op(backend, on_backend));
    std::vector<Tensor> results;
    for (const Tensor& t : on_backend) {
      ST_ASSIGN_OR_RETURN(Tensor h, backend.Download(t));
      const bool narrow = h.dtype() == DType::kBF16 || h.dtype() == DType::kF16;
      results.push_back(narrow ? h.To(DType::kF32) : h);
    }
    return results;
  }

  // `op` on both backends over the same operands; every operand must agree afterwards.
  void ExpectAgree(const std::vector<Operand>& operands, const Op& op, double rel) {
    auto want = Run(cpu_, operands, op);
    ASSERT_TRUE(want.ok()) << "cpu: " << want.status();
    auto got = Run(*gpu_, operands, op);
    ASSERT_TRUE(got.ok()) << "cuda: " << got.status();
    ASSERT_EQ(got->size(), want->size());
    for (size_t i = 0; i < want->size(); ++i) EXPECT_TRUE(Matches((*got)[i], (*want)[i], rel)) << "operand " << i;
  }

  // Which backend an op is running on (0: CPU, 1: CUDA), for ops that also return a host value.
  int Side(const ModelBackend& b) const { return &b == &cpu_ ? 0 : 1; }

  CpuBackend cpu_;
  std::unique_ptr<CudaBackend> gpu_;
};

Tensor I32(const std::vector<int32_t>& v) { return Tensor::FromVector<int32_t>({static_cast<int64_t>(v.size())}, v); }

// Ids/targets in [0, bound), deterministic.
std::vector<int32_t> Ids(int64_t n, int32_t bound, uint32_t seed) {
  std::vector<int32_t> ids(n);
  uint32_t x = seed * 2654435761u + 12345u;
  for (auto& id : ids) {
    x = x * 1664525u + 1013904223u;
    id = static_cast<int32_t>((x >> 8) % static_cast<uint32_t>(bound));
  }
  return ids;
}

// ----------------------------------------------------------------------------------------------
// Memory, transfers, Copy, Axpy.

TEST(CudaBackendCreateTest, RefusesActivationDTypesOtherThanBf16AndF32) {
  // Checked before the device is touched, so this runs on machines without a GPU as well.
  for (DType dt : {DType::kF16, DType::kF64, DType::kI32}) {
    auto backend = CudaBackend::Create(0, dt);
    ASSERT_FALSE(backend.ok());
    EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument) << backend.status();
    const std::string name(DTypeName(dt));
    EXPECT_ERROR_MENTIONS(backend.status(), "bf16", "f32", name.c_str());
  }
}

TEST_F(CudaBackendTest, CreateRecordsDeviceAndActivationDType) {
  EXPECT_EQ(gpu_->device(), Device::Cuda(0));
  EXPECT_EQ(gpu_->activation_dtype(), DType::kF32);
  ASSERT_OK_AND_ASSIGN(auto bf16, CudaBackend::Create(0, DType::kBF16));
  EXPECT_EQ(bf16->activation_dtype(), DType::kBF16);
  EXPECT_EQ(bf16->device(), Device::Cuda(0));
}

TEST_F(CudaBackendTest, AllocateAndZerosGiveContiguousDeviceTensors) {
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF64, DType::kI32}) {
    SCOPED_TRACE(DTypeName(dt));
    ASSERT_OK_AND_ASSIGN(const Tensor a, gpu_->Allocate({3, 5}, dt));
    EXPECT_EQ(a.device(), Device::Cuda(0));
    EXPECT_EQ(a.shape(), (Shape{3, 5}));
    EXPECT_EQ(a.dtype(), dt);
    EXPECT_TRUE(a.is_contiguous());
    ASSERT_OK_AND_ASSIGN(const Tensor z, gpu_->Zeros({2, 3, 7}, dt));
    ASSERT_OK_AND_ASSIGN(const Tensor host, gpu_->Download(z));
    EXPECT_TRUE(AllClose(host, Tensor::Zeros({2, 3, 7}, dt), Tolerance{0, 0}));
  }
  EXPECT_EQ(gpu_->Allocate({2, -1}, DType::kF32).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaBackendTest, PeakDeviceBytesCoversWhatWasHeld) {
  {
    ASSERT_OK_AND_ASSIGN(const Tensor big, gpu_->Zeros({64, 1024, 1024}, DType::kF32));  // 256 MiB
    ASSERT_TRUE(gpu_->Synchronize().ok());
  }
  ASSERT_OK_AND_ASSIGN(const int64_t peak, gpu_->PeakDeviceBytes());
  EXPECT_GE(peak, int64_t{256} << 20);
}

TEST_F(CudaBackendTest, ZeroElementTensorsWork) {
  ASSERT_OK_AND_ASSIGN(Tensor a, gpu_->Allocate({0, 4}, DType::kF32));
  EXPECT_EQ(a.numel(), 0);
  ASSERT_OK_AND_ASSIGN(Tensor z, gpu_->Zeros({4, 0}, DType::kBF16));
  EXPECT_EQ(z.numel(), 0);
  ASSERT_OK_AND_ASSIGN(const Tensor up, gpu_->Upload(Tensor::Empty({0, 4}, DType::kF32)));
  EXPECT_EQ(up.shape(), (Shape{0, 4}));
  ASSERT_OK(gpu_->Copy(up, &a));
  ASSERT_OK(gpu_->Axpy(2.0, up, &a));
  ASSERT_OK_AND_ASSIGN(const Tensor down, gpu_->Download(a));
  EXPECT_EQ(down.shape(), (Shape{0, 4}));
  EXPECT_TRUE(down.device().is_cpu());
  ASSERT_OK_AND_ASSIGN(const double sum, gpu_->SumOfSquares(a));
  EXPECT_EQ(sum, 0.0);
}

TEST_F(CudaBackendTest, AbsurdAllocationIsResourceExhaustedNamingTheBytes) {
  const int64_t elements = int64_t{1} << 58;  // f32: 2^60 bytes
  auto t = gpu_->Allocate({elements}, DType::kF32);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kResourceExhausted) << t.status();
  EXPECT_ERROR_MENTIONS(t.status(), "1152921504606846976", "f32", "free");
  EXPECT_EQ(gpu_->Zeros({elements, 2}, DType::kBF16).status().code(), absl::StatusCode::kResourceExhausted);
  // The failure leaves nothing behind that a later synchronisation would report.
  ASSERT_OK_AND_ASSIGN(const Tensor x, gpu_->Upload(Tensor::FromVector<float>({2}, {3, 4})));
  ASSERT_OK_AND_ASSIGN(const double sum, gpu_->SumOfSquares(x));
  EXPECT_EQ(sum, 25.0);
}

TEST_F(CudaBackendTest, UploadDownloadRoundTripsEveryDType) {
  for (DType dt : {DType::kF32, DType::kF64, DType::kBF16, DType::kF16, DType::kI32}) {
    SCOPED_TRACE(DTypeName(dt));
    const Tensor host = RandomSmallIntegers({7, 9}, dt, 100, 3);
    ASSERT_OK_AND_ASSIGN(const Tensor dev, gpu_->Upload(host));
    EXPECT_EQ(dev.device(), Device::Cuda(0));
    ASSERT_OK_AND_ASSIGN(const Tensor back, gpu_->Download(dev));
    EXPECT_TRUE(AllClose(back, host, Tolerance{0, 0}));
    EXPECT_EQ(back.dtype(), dt);
  }
}

TEST_F(CudaBackendTest, UploadAndDownloadHandleStridesAndTensorsAlreadyInPlace) {
  const Tensor m = RandomNormal({6, 10}, DType::kF32, 4);
  // A strided host view arrives contiguous.
  ASSERT_OK_AND_ASSIGN(const Tensor dt, gpu_->Upload(m.Transposed()));
  EXPECT_TRUE(dt.is_contiguous());
  ASSERT_OK_AND_ASSIGN(const Tensor back_t, gpu_->Download(dt));
  EXPECT_TRUE(AllClose(back_t, m.Transposed().Contiguous(), Tolerance{0, 0}));
  // Strided device views (a column slice, a transpose, both) come back as their elements.
  ASSERT_OK_AND_ASSIGN(const Tensor dm, gpu_->Upload(m));
  for (const auto& [view, expected] : std::vector<std::pair<Tensor, Tensor>>{
           {dm.Slice(1, 2, 7), m.Slice(1, 2, 7)},
           {dm.Transposed(), m.Transposed()},
           {dm.Slice(0, 1, 5).Slice(1, 3, 9).Transposed(), m.Slice(0, 1, 5).Slice(1, 3, 9).Transposed()}}) {
    ASSERT_OK_AND_ASSIGN(const Tensor h, gpu_->Download(view));
    EXPECT_TRUE(h.is_contiguous());
    EXPECT_TRUE(AllClose(h, expected.Contiguous(), Tolerance{0, 0}));
  }
  // As on the CPU backend: a tensor already on the device is not copied, a CPU tensor is not moved.
  ASSERT_OK_AND_ASSIGN(const Tensor same, gpu_->Upload(dm));
  EXPECT_EQ(same.raw_data(), dm.raw_data());
  ASSERT_OK_AND_ASSIGN(const Tensor host_again, gpu_->Download(m));
  EXPECT_TRUE(AllClose(host_again, m, Tolerance{0, 0}));
  EXPECT_FALSE(gpu_->Upload(dm.Transposed()).ok());  // a strided device tensor cannot be made contiguous here
}

TEST_F(CudaBackendTest, TensorsMayOutliveTheBackend) {
  Tensor survivor;
  {
    ASSERT_OK_AND_ASSIGN(auto other, CudaBackend::Create(0, DType::kBF16));
    ASSERT_OK_AND_ASSIGN(survivor, other->Zeros({1000}, DType::kF32));
    ASSERT_OK_AND_ASSIGN(const Tensor upload, other->Upload(RandomNormal({1000}, DType::kF32, 1)));
    ASSERT_OK(other->Copy(upload, &survivor));
  }
  survivor = Tensor();  // freed after its stream is gone: must neither crash nor poison later work
  ASSERT_OK_AND_ASSIGN(const Tensor x, gpu_->Upload(Tensor::FromVector<float>({1}, {2})));
  ASSERT_OK_AND_ASSIGN(const double sum, gpu_->SumOfSquares(x));
  EXPECT_EQ(sum, 4.0);
}

TEST_F(CudaBackendTest, CopyMatchesCpu) {
  for (DType dt : {DType::kF32, DType::kBF16, DType::kI32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    const Tensor src = RandomSmallIntegers({5, 11}, dt, 50, 7);
    ExpectAgree(
        {Same(src), Same(Tensor::Zeros({5, 11}, dt))},
        [](ModelBackend& b, std::vector<Tensor>& t) { return b.Copy(t[0], &t[1]); }, kExact);
  }
  ASSERT_OK_AND_ASSIGN(const Tensor a, gpu_->Zeros({2, 3}, DType::kF32));
  ASSERT_OK_AND_ASSIGN(Tensor b, gpu_->Zeros({3, 2}, DType::kF32));
  ASSERT_OK_AND_ASSIGN(Tensor c, gpu_->Zeros({2, 3}, DType::kBF16));
  EXPECT_EQ(gpu_->Copy(a, &b).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu_->Copy(a, &c).code(), absl::StatusCode::kInvalidArgument);
  Tensor host = Tensor::Zeros({2, 3}, DType::kF32);
  EXPECT_EQ(gpu_->Copy(a, &host).code(), absl::StatusCode::kInvalidArgument);  // not on the device
}

TEST_F(CudaBackendTest, AxpyMatchesCpu) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    ExpectAgree(
        {Same(RandomNormal({13, 17}, dt, 1)), Same(RandomNormal({13, 17}, dt, 2))},
        [](ModelBackend& b, std::vector<Tensor>& t) { return b.Axpy(-0.75, t[0], &t[1]); }, kF32Rel);
  }
  ASSERT_OK_AND_ASSIGN(const Tensor i, gpu_->Zeros({4}, DType::kI32));
  ASSERT_OK_AND_ASSIGN(Tensor j, gpu_->Zeros({4}, DType::kI32));
  ASSERT_OK_AND_ASSIGN(Tensor f, gpu_->Zeros({5}, DType::kF32));
  ASSERT_OK_AND_ASSIGN(const Tensor g, gpu_->Zeros({4}, DType::kF32));
  EXPECT_EQ(gpu_->Axpy(1.0, i, &j).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu_->Axpy(1.0, g, &f).code(), absl::StatusCode::kInvalidArgument);
}

// ----------------------------------------------------------------------------------------------
// The model ops, f32 and bf16. `Act(t)` is an activation operand: f32 on the CPU, `dt` on the device.

class CudaBackendModelOpsTest : public CudaBackendTest, public ::testing::WithParamInterface<DType> {
 protected:
  DType dt() const { return GetParam(); }
  Operand Act(const Tensor& t) const { return As(t, dt()); }
  double Rel() const { return dt() == DType::kBF16 ? kBf16Rel : kF32Rel; }
};

TEST_P(CudaBackendModelOpsTest, Matmul) {
  const int64_t m = 37, k = 53, n = 29;
  for (Transpose ta : {Transpose::kNo, Transpose::kYes}) {
    for (Transpose tb : {Transpose::kNo, Transpose::kYes}) {
      SCOPED_TRACE(::testing::Message() << "ta " << static_cast<int>(ta) << " tb " << static_cast<int>(tb));
      const Tensor a = RandomNormal(ta == Transpose::kNo ? Shape{m, k} : Shape{k, m}, DType::kF32, 1);
      const Tensor b = RandomNormal(tb == Transpose::kNo ? Shape{k, n} : Shape{n, k}, DType::kF32, 2);
      const Tensor c = RandomNormal({m, n}, DType::kF32, 3);
      const Op op = [ta, tb](ModelBackend& be, std::vector<Tensor>& t) {
        return be.Matmul(t[0], ta, t[1], tb, 0.5, 0.25, &t[2]);
      };
      ExpectAgree({Act(a), Act(b), Act(c)}, op, Rel());
      // Half inputs into an f32 result (the model's logits).
      ExpectAgree({Act(a), Act(b), Same(c)}, op, Rel());
    }
  }
}

TEST_P(CudaBackendModelOpsTest, EmbeddingForward) {
  const Tensor table = RandomNormal({50, 24}, DType::kF32, 5);
  const Tensor ids = I32(Ids(17, 50, 1));
  // A gather: exact once the table is in the device dtype.
  ExpectAgree(
      {Act(table), Same(ids), Act(Tensor::Zeros({17, 24}, DType::kF32))},
      [](ModelBackend& b, std::vector<Tensor>& t) { return b.EmbeddingForward(t[0], t[1], &t[2]); }, kExact);
  ASSERT_OK_AND_ASSIGN(const Tensor dtable, gpu_->Upload(table.To(dt())));
  ASSERT_OK_AND_ASSIGN(const Tensor bad, gpu_->Upload(I32({3, 50, 1})));
  ASSERT_OK_AND_ASSIGN(Tensor out, gpu_->Allocate({3, 24}, dt()));
  const absl::Status s = gpu_->EmbeddingForward(dtable, bad, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_ERROR_MENTIONS(s, "ids[1] = 50");
}

TEST_P(CudaBackendModelOpsTest, RmsNormForwardAndBackward) {
  const Tensor x = RandomNormal({13, 96}, DType::kF32, 6), dy = RandomNormal({13, 96}, DType::kF32, 7);
  const Tensor w = RandomUniform({96}, DType::kF32, 0.5, 1.5, 8), zeros = Tensor::Zeros({13, 96}, DType::kF32);
  ExpectAgree(
      {Act(x), Act(w), Act(zeros)},
      [](ModelBackend& b, std::vector<Tensor>& t) { return b.RmsNormForward(t[0], t[1], 1e-5, &t[2]); }, Rel());
  ExpectAgree(
      {Act(x), Act(w), Act(dy), Act(zeros)},
      [](ModelBackend& b, std::vector<Tensor>& t) { return b.RmsNormBackward(t[0], t[1], 1e-5, t[2], &t[3]); }, Rel());
}

TEST_P(CudaBackendModelOpsTest, ApplyRope) {
  kernels::RopeConfig plain;
  plain.head_dim = 32;
  kernels::RopeConfig llama3 = plain;
  llama3.theta = 500000.0;
  llama3.rotary_dim = 16;  // partial rotary: the tail passes through
  llama3.scaling = kernels::RopeScaling::kLlama3;
  llama3.original_max_position_embeddings = 16;
  // Two packed sequences (positions restart), one with large positions.
  const Tensor positions = I32({0, 1, 2, 3, 4, 0, 1, 2, 900, 901, 4000});
  const Tensor x = RandomNormal({11, 4, 32}, DType::kF32, 9);
  for (const kernels::RopeConfig& config : {plain, llama3}) {
    for (kernels::RopeDirection dir : {kernels::RopeDirection::kForward, kernels::RopeDirection::kBackward}) {
      SCOPED_TRACE(::testing::Message() << "rotary " << config.rotary_dim << " dir " << static_cast<int>(dir));
      ExpectAgree(
          {Act(x), Same(positions), Act(Tensor::Zeros(x.shape(), DType::kF32))},
          [&config, dir](ModelBackend& b, std::vector<Tensor>& t) {
            return b.ApplyRope(t[0], t[1], config, dir, &t[2]);
          },
          Rel());
      // In place, as the model applies it.
      ExpectAgree(
          {Act(x), Same(positions)},
          [&config, dir](ModelBackend& b, std::vector<Tensor>& t) {
            return b.ApplyRope(t[0], t[1], config, dir, &t[0]);
          },
          Rel());
    }
  }
}

TEST_P(CudaBackendModelOpsTest, AttentionForwardAndBackward) {
  // GQA (4 query heads over 2 kv heads) over three packed sequences, one of them empty.
  const Tensor cu = I32({0, 5, 5, 12});
  const int64_t tokens = 12, heads = 4, kv = 2, hd = 16;
  const Tensor q = RandomNormal({tokens, heads, hd}, DType::kF32, 10);
  const Tensor k = RandomNormal({tokens, kv, hd}, DType::kF32, 11);
  const Tensor v = RandomNormal({tokens, kv, hd}, DType::kF32, 12);
  const Tensor dout = RandomNormal({tokens, heads, hd}, DType::kF32, 13);
  const Tensor out0 = Tensor::Zeros(q.shape(), DType::kF32), lse0 = Tensor::Zeros({tokens, heads}, DType::kF32);
  ExpectAgree(
      {Act(q), Act(k), Act(v), Act(out0), Same(lse0)},
      [&cu](ModelBackend& b, std::vector<Tensor>& t) { return b.AttentionForward(t[0], t[1], t[2], cu, &t[3], &t[4]); },
      Rel());
  // The backward takes the forward's out and lse: the CPU's, on the (rounded) inputs both runs see.
  const Tensor q_in = CpuValues(Act(q)), k_in = CpuValues(Act(k)), v_in = CpuValues(Act(v));
  Tensor out = out0.Contiguous(), lse = lse0.Contiguous();
  ASSERT_OK(cpu_.AttentionForward(q_in, k_in, v_in, cu, &out, &lse));
  const Tensor kv0 = Tensor::Zeros(k.shape(), DType::kF32);
  ExpectAgree(
      {Act(q), Act(k), Act(v), Act(out), Same(lse), Act(dout), Act(out0), Act(kv0), Act(kv0)},
      [&cu](ModelBackend& b, std::vector<Tensor>& t) {
        return b.AttentionBackward(t[0], t[1], t[2], cu, t[3], t[4], t[5], &t[6], &t[7], &t[8]);
      },
      Rel());
}

TEST_P(CudaBackendModelOpsTest, SwigluForwardAndBackward) {
  const Tensor gate = RandomNormal({9, 40}, DType::kF32, 14), up = RandomNormal({9, 40}, DType::kF32, 15);
  const Tensor dout = RandomNormal({9, 40}, DType::kF32, 16), zeros = Tensor::Zeros({9, 40}, DType::kF32);
  ExpectAgree(
      {Act(gate), Act(up), Act(zeros)},
      [](ModelBackend& b, std::vector<Tensor>& t) { return b.SwigluForward(t[0], t[1], &t[2]); }, Rel());
  ExpectAgree(
      {Act(gate), Act(up), Act(dout), Act(zeros), Act(zeros)},
      [](ModelBackend& b, std::vector<Tensor>& t) { return b.SwigluBackward(t[0], t[1], t[2], &t[3], &t[4]); }, Rel());
}

TEST_P(CudaBackendModelOpsTest, LmHeadCrossEntropyForwardAndBackward) {
  const int64_t tokens = 10, d = 32, vocab = 45;
  const Tensor hidden = RandomNormal({tokens, d}, DType::kF32, 17);
  const Tensor weight = RandomUniform({vocab, d}, DType::kF32, -0.3, 0.3, 18);
  std::vector<int32_t> labels = Ids(tokens, vocab, 2);
  labels[3] = labels[9] = kernels::kIgnoreIndex;
  const Tensor targets = I32(labels), zeros = Tensor::Zeros({tokens, d}, DType::kF32);
  kernels::CrossEntropyOptions options;
  options.chunk_tokens = 4;  // three chunks, the last one short
  kernels::CrossEntropyStats stats[2];
  for (bool with_grad : {true, false}) {
    SCOPED_TRACE(with_grad ? "with dhidden_unit" : "loss only");
    ExpectAgree(
        {Act(hidden), Act(weight), Same(targets), Act(zeros)},
        [&](ModelBackend& b, std::vector<Tensor>& t) -> absl::Status {
          ST_ASSIGN_OR_RETURN(stats[Side(b)],
                              b.LmHeadCrossEntropyForward(t[0], t[1], t[2], options, with_grad ? &t[3] : nullptr));
          return absl::OkStatus();
        },
        Rel());
    EXPECT_EQ(stats[1].count, 8);
    EXPECT_EQ(stats[1].count, stats[0].count);
    EXPECT_NEAR(stats[1].loss, stats[0].loss, Rel() * stats[0].loss);
    EXPECT_NEAR(stats[1].loss_sum, stats[0].loss_sum, Rel() * stats[0].loss_sum);
  }
  ExpectAgree(
      {Act(hidden), Act(weight), Same(targets), Act(zeros)},
      [&](ModelBackend& b, std::vector<Tensor>& t) {
        return b.LmHeadCrossEntropyBackward(t[0], t[1], t[2], options, 0.125, &t[3]);
      },
      Rel());
}

TEST_P(CudaBackendModelOpsTest, Axpy) {
  ExpectAgree(
      {Act(RandomNormal({21, 33}, DType::kF32, 19)), Act(RandomNormal({21, 33}, DType::kF32, 20))},
      [](ModelBackend& b, std::vector<Tensor>& t) { return b.Axpy(0.375, t[0], &t[1]); }, Rel());
}

INSTANTIATE_TEST_SUITE_P(F32AndBf16, CudaBackendModelOpsTest, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

// ----------------------------------------------------------------------------------------------
// Cast and the linear algebra / adapter / optimizer ops (f32 and f64).

TEST_F(CudaBackendTest, CastMatchesCpuExactly) {
  const Tensor x = RandomNormal({6, 19}, DType::kF32, 21);
  const DType all[] = {DType::kF32, DType::kF64, DType::kBF16, DType::kF16};
  for (DType from : all) {
    for (DType to : all) {
      SCOPED_TRACE(::testing::Message() << DTypeName(from) << " -> " << DTypeName(to));
      ExpectAgree(
          {Same(x.To(from)), Same(Tensor::Zeros(x.shape(), to))},
          [](ModelBackend& b, std::vector<Tensor>& t) { return b.Cast(t[0], &t[1]); }, kExact);
    }
  }
}

TEST_F(CudaBackendTest, SvdMatchesCpuUpToSigns) {
  for (const auto& [m, n] : std::vector<std::pair<int64_t, int64_t>>{{40, 25}, {20, 33}}) {
    SCOPED_TRACE(::testing::Message() << m << "x" << n);
    const int64_t k = std::min(m, n);
    std::vector<double> sigma(k);
    for (int64_t i = 0; i < k; ++i) sigma[i] = 2.0 - 1.9 * static_cast<double>(i) / static_cast<double>(k);
    const Tensor a = RandomWithSingularValues(m, n, sigma, DType::kF32, 22);
    Tensor factors[2][3];  // [cpu, cuda] x [u, s, vt]
    for (ModelBackend* b : {static_cast<ModelBackend*>(&cpu_), static_cast<ModelBackend*>(gpu_.get())}) {
      ASSERT_OK_AND_ASSIGN(const Tensor da, b->Upload(a));
      ASSERT_OK_AND_ASSIGN(Tensor u, b->Allocate({m, k}, DType::kF32));
      ASSERT_OK_AND_ASSIGN(Tensor s, b->Allocate({k}, DType::kF32));
      ASSERT_OK_AND_ASSIGN(Tensor vt, b->Allocate({k, n}, DType::kF32));
      ASSERT_OK(b->Svd(da, &u, &s, &vt));
      Tensor* f = factors[Side(*b)];
      ASSERT_OK_AND_ASSIGN(f[0], b->Download(u));
      ASSERT_OK_AND_ASSIGN(f[1], b->Download(s));
      ASSERT_OK_AND_ASSIGN(f[2], b->Download(vt));
    }
    EXPECT_TRUE(Matches(factors[1][1], factors[0][1], kF32Rel));
    const Tensor usv = ReconstructF64(factors[1][0], factors[1][1], factors[1][2]);
    EXPECT_LE(RelativeError(usv, ReconstructF64(factors[0][0], factors[0][1], factors[0][2])), kF32Rel);
    EXPECT_LE(RelativeError(usv, a), kF32Rel);
    EXPECT_LE(OrthonormalityError(factors[1][0], Along::kColumns), kF32Rel);
    EXPECT_LE(OrthonormalityError(factors[1][2], Along::kRows), kF32Rel);
  }
}

TEST_F(CudaBackendTest, RandomizedSvdMatchesCpu) {
  const int64_t m = 60, n = 40, rank = 5;
  std::vector<double> sigma(n);
  for (int64_t i = 0; i < n; ++i) sigma[i] = std::pow(0.5, static_cast<double>(i));
  const Tensor a = RandomWithSingularValues(m, n, sigma, DType::kF32, 23);
  Tensor factors[2][3];
  for (ModelBackend* b : {static_cast<ModelBackend*>(&cpu_), static_cast<ModelBackend*>(gpu_.get())}) {
    ASSERT_OK_AND_ASSIGN(const Tensor da, b->Upload(a));
    ASSERT_OK_AND_ASSIGN(Tensor u, b->Allocate({m, rank}, DType::kF32));
    ASSERT_OK_AND_ASSIGN(Tensor s, b->Allocate({rank}, DType::kF32));
    ASSERT_OK_AND_ASSIGN(Tensor vt, b->Allocate({rank, n}, DType::kF32));
    ASSERT_OK(b->RandomizedSvd(da, rank, /*niter=*/4, /*seed=*/21, &u, &s, &vt));
    Tensor* f = factors[Side(*b)];
    ASSERT_OK_AND_ASSIGN(f[0], b->Download(u));
    ASSERT_OK_AND_ASSIGN(f[1], b->Download(s));
    ASSERT_OK_AND_ASSIGN(f[2], b->Download(vt));
  }
  // The same host-made start matrix on both: the same singular values and low-rank matrix.
  EXPECT_TRUE(Matches(factors[1][1], factors[0][1], kF32Rel));
  EXPECT_LE(RelativeError(ReconstructF64(factors[1][0], factors[1][1], factors[1][2]),
                          ReconstructF64(factors[0][0], factors[0][1], factors[0][2])),
            kF32Rel);
  EXPECT_LE(OrthonormalityError(factors[1][0], Along::kColumns), kF32Rel);
  EXPECT_LE(OrthonormalityError(factors[1][2], Along::kRows), kF32Rel);
}

TEST_F(CudaBackendTest, InverseMatchesCpu) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    std::vector<double> sigma(24);
    for (size_t i = 0; i < sigma.size(); ++i) sigma[i] = 1.0 + 0.1 * static_cast<double>(i);
    ExpectAgree(
        {Same(RandomWithSingularValues(24, 24, sigma, dt, 24)), Same(Tensor::Zeros({24, 24}, dt))},
        [](ModelBackend& b, std::vector<Tensor>& t) { return b.Inverse(t[0], &t[1]); }, kF32Rel);
  }
  ASSERT_OK_AND_ASSIGN(const Tensor singular, gpu_->Zeros({5, 5}, DType::kF32));
  ASSERT_OK_AND_ASSIGN(Tensor inv, gpu_->Allocate({5, 5}, DType::kF32));
  EXPECT_EQ(gpu_->Inverse(singular, &inv).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(CudaBackendTest, MatrixReductionsMatchCpu) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    const double rel = dt == DType::kF32 ? kF32Rel : 1e-10;
    Tensor a = RandomNormal({31, 31}, dt, 25);
    Tensor with_bad = RandomNormal({7, 13}, dt, 26);
    if (dt == DType::kF32) {
      with_bad.data<float>()[3] = NAN;
      with_bad.data<float>()[40] = INFINITY;
      with_bad.data<float>()[90] = -INFINITY;
    } else {
      with_bad.data<double>()[3] = NAN;
      with_bad.data<double>()[40] = INFINITY;
      with_bad.data<double>()[90] = -INFINITY;
    }
    double mean[2], distance[2], squares[2];
    int64_t non_finite[2];
    for (ModelBackend* b : {static_cast<ModelBackend*>(&cpu_), static_cast<ModelBackend*>(gpu_.get())}) {
      const int side = Side(*b);
      ASSERT_OK_AND_ASSIGN(const Tensor da, b->Upload(a));
      ASSERT_OK_AND_ASSIGN(const Tensor dbad, b->Upload(with_bad));
      ASSERT_OK_AND_ASSIGN(mean[side], b->DiagonalMean(da));
      ASSERT_OK_AND_ASSIGN(distance[side], b->DistanceFromIdentity(da));
      ASSERT_OK_AND_ASSIGN(squares[side], b->SumOfSquares(da));
      ASSERT_OK_AND_ASSIGN(non_finite[side], b->CountNonFinite(dbad));
    }
    // The entries are O(1): the mean of 31 of them may be near 0, so its error is absolute.
    EXPECT_NEAR(mean[1], mean[0], rel * (std::fabs(mean[0]) + 1.0));
    EXPECT_NEAR(distance[1], distance[0], rel * distance[0]);
    EXPECT_NEAR(squares[1], squares[0], rel * squares[0]);
    EXPECT_EQ(non_finite[0], 3);
    EXPECT_EQ(non_finite[1], non_finite[0]);
    ExpectAgree(
        {Same(a)}, [](ModelBackend& b, std::vector<Tensor>& t) { return b.AddScaledIdentity(-0.5, &t[0]); }, rel);
  }
}

TEST_F(CudaBackendTest, CovarianceMatchesCpuExactly) {
  // Small integers: every product and sum is exact, so the two agree to the bit in any order.
  const Tensor c0 = RandomSmallIntegers({16, 16}, DType::kF32, 5, 27);
  for (DType xt : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(xt));
    const Tensor x = RandomSmallIntegers({30, 16}, xt, 3, 28);
    ExpectAgree(
        {Same(x), Same(c0)},
        [](ModelBackend& b, std::vector<Tensor>& t) {
          return b.AccumulateCovariance(t[0], 0.5, &t[1], kernels::CovarianceFill::kFull);
        },
        kExact);
    // The calibration form: upper triangle per batch, one mirror at the end.
    ExpectAgree(
        {Same(x), Same(c0)},
        [](ModelBackend& b, std::vector<Tensor>& t) -> absl::Status {
          ST_RETURN_IF_ERROR(b.AccumulateCovariance(t[0], 1.0, &t[1], kernels::CovarianceFill::kUpperOnly));
          ST_RETURN_IF_ERROR(b.AccumulateCovariance(t[0], 2.0, &t[1], kernels::CovarianceFill::kUpperOnly));
          return b.SymmetrizeFromUpper(&t[1]);
        },
        kExact);
  }
  ExpectAgree(
      {Same(RandomNormal({9, 9}, DType::kF64, 29))},
      [](ModelBackend& b, std::vector<Tensor>& t) { return b.SymmetrizeFromUpper(&t[0]); }, kExact);
}

TEST_F(CudaBackendTest, ScaleSegmentsByAbsMaxMatchesCpu) {
  // Segments [0, 3), [3, 3) (empty), [3, 6) (all zero: bad), [6, 7); rows 7 and 8 are padding.
  const Tensor cu = I32({0, 3, 3, 6, 7});
  Tensor x = RandomNormal({9, 6}, DType::kF32, 30);
  for (int64_t i = 3 * 6; i < 6 * 6; ++i) x.data<float>()[i] = 0.0f;
  const Tensor bad = I32({2});  // not reset by the op: 2 + 1 bad segment
  ExpectAgree(
      {Same(x), Same(RandomNormal({9, 6}, DType::kF32, 31)), Same(bad)},
      [&cu](ModelBackend& b, std::vector<Tensor>& t) { return b.ScaleSegmentsByAbsMax(t[0], cu, &t[1], &t[2]); },
      kF32Rel);
  ASSERT_OK_AND_ASSIGN(const Tensor dx, gpu_->Upload(x));
  ASSERT_OK_AND_ASSIGN(Tensor y, gpu_->Allocate({9, 6}, DType::kF32));
  ASSERT_OK_AND_ASSIGN(Tensor dbad, gpu_->Upload(bad));
  ASSERT_OK(gpu_->ScaleSegmentsByAbsMax(dx, cu, &y, &dbad));
  ASSERT_OK_AND_ASSIGN(const Tensor hbad, gpu_->Download(dbad));
  EXPECT_EQ(hbad.data<int32_t>()[0], 3);
}

TEST_F(CudaBackendTest, AdapterOpsMatchCpu) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dt));
    const Tensor x = RandomNormal({12, 7}, dt, 32), d = RandomNormal({7}, dt, 33);
    const Tensor y = RandomNormal({12, 7}, dt, 34), out = RandomNormal({7}, dt, 35);
    ExpectAgree(
        {Same(x), Same(d), Same(y)},
        [](ModelBackend& b, std::vector<Tensor>& t) { return b.ScaleColumns(t[0], t[1], &t[2]); }, kF32Rel);
    for (double beta : {0.0, 0.5}) {
      ExpectAgree(
          {Same(x), Same(y), Same(out)},
          [beta](ModelBackend& b, std::vector<Tensor>& t) { return b.ColumnDot(t[0], t[1], beta, &t[2]); }, kF32Rel);
    }
    // The mask is a function of (seed, index): the same elements are dropped on both.
    ExpectAgree(
        {Same(RandomNormal({5, 33}, dt, 36)), Same(Tensor::Zeros({5, 33}, dt))},
        [](ModelBackend& b, std::vector<Tensor>& t) { return b.Dropout(t[0], 0.3, 99, &t[1]); }, kF32Rel);
  }
}

TEST_F(CudaBackendTest, AdamWStepMatchesCpu) {
  kernels::AdamWStepArgs args;
  args.lr = 1e-2;
  args.weight_decay = 0.1;
  args.grad_scale = 0.5;
  args.step = 3;
  ExpectAgree(
      {Same(RandomNormal({8, 19}, DType::kF32, 37)), Same(RandomNormal({8, 19}, DType::kF32, 38)),
       Same(RandomNormal({8, 19}, DType::kF32, 39)), Same(RandomUniform({8, 19}, DType::kF32, 0.0, 1.0, 40))},
      [&args](ModelBackend& b, std::vector<Tensor>& t) { return b.AdamWStep(&t[0], t[1], &t[2], &t[3], args); },
      kF32Rel);
}

#else  // !SIGMATUNE_WITH_CUDA

TEST(CudaBackendTest, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA"; }

#endif

}  // namespace
}  // namespace sigmatune::model
