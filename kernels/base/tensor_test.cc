#include "kernels/base/tensor.h"

#include "gtest/gtest.h"

namespace sigmatune {
namespace {

TEST(TensorTest, EmptyIsContiguousAndAligned) {
  Tensor t = Tensor::Empty({3, 5}, DType::kF32);
  EXPECT_EQ(t.rank(), 2);
  EXPECT_EQ(t.numel(), 15);
  EXPECT_EQ(t.nbytes(), 60u);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.strides(), (std::vector<int64_t>{5, 1}));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 64, 0u);
  EXPECT_TRUE(t.device().is_cpu());
}

TEST(TensorTest, ZerosAndFromVector) {
  Tensor z = Tensor::Zeros({4}, DType::kF64);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(z.data<double>()[i], 0.0);
  Tensor v = Tensor::FromVector<float>({2, 2}, {1, 2, 3, 4});
  EXPECT_EQ((v.at<float>({1, 0})), 3.0f);
}

TEST(TensorTest, SliceAndTransposeAreViews) {
  Tensor t = Tensor::FromVector<float>({3, 4}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  Tensor cols = t.Slice(1, 1, 3);  // columns 1..2
  EXPECT_EQ(cols.shape(), (Shape{3, 2}));
  EXPECT_FALSE(cols.is_contiguous());
  EXPECT_EQ((cols.at<float>({2, 1})), 10.0f);
  cols.at<float>({0, 0}) = 100.0f;  // writes through to t
  EXPECT_EQ((t.at<float>({0, 1})), 100.0f);

  Tensor tt = t.Transposed();
  EXPECT_EQ(tt.shape(), (Shape{4, 3}));
  EXPECT_EQ((tt.at<float>({3, 2})), 11.0f);
  Tensor c = tt.Contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.data<float>()[1], 4.0f);  // row 0 of the transpose = column 0 of t
}

TEST(TensorTest, ReshapeKeepsData) {
  Tensor t = Tensor::FromVector<int32_t>({2, 3}, {1, 2, 3, 4, 5, 6});
  Tensor r = t.Reshape({3, 2});
  EXPECT_EQ((r.at<int32_t>({2, 0})), 5);
  EXPECT_EQ(r.raw_data(), t.raw_data());
}

TEST(TensorTest, ConversionRoundsAndReads) {
  Tensor t = Tensor::FromVector<float>({3}, {1.0f, 1.0f + 0x1p-8f, -3.0f});
  Tensor b = t.To(DType::kBF16);
  EXPECT_EQ(b.dtype(), DType::kBF16);
  EXPECT_EQ(GetAsDouble(b, 1), 1.0);  // tie rounds to even
  Tensor back = b.To(DType::kF64);
  EXPECT_EQ(back.data<double>()[2], -3.0);
  // Strided conversion of a transposed view.
  Tensor m = Tensor::FromVector<double>({2, 2}, {1, 2, 3, 4});
  Tensor mt = m.Transposed().To(DType::kF32);
  EXPECT_EQ(mt.data<float>()[1], 3.0f);
}

TEST(TensorTest, WrapDoesNotOwn) {
  float buffer[6] = {1, 2, 3, 4, 5, 6};
  {
    Tensor w = Tensor::Wrap(buffer, {2, 3}, DType::kF32, Device::Cpu());
    w.at<float>({1, 2}) = 60.0f;
  }
  EXPECT_EQ(buffer[5], 60.0f);  // still alive, written through
}

TEST(TensorDeathTest, WrongTypeAccessChecks) {
  Tensor t = Tensor::Empty({2}, DType::kF32);
  EXPECT_DEATH(t.data<double>(), "tensor is f32, asked for f64");
  EXPECT_DEATH(t.Slice(0, 1, 3), "slice");
}

}  // namespace
}  // namespace sigmatune
