"""`kernel_op`: the file pattern of one op in kernels/ops (DESIGN.md conventions).

    kernel_op(name = "matmul", ...)
expects matmul.h (contract; declares kernels::cpu and kernels::cuda functions), matmul_cpu.cc
(plain reference), matmul_cuda.cu (CUDA), matmul_test.cc (CPU golden/identities, then CUDA vs CPU,
skipped without a GPU) and defines :matmul_cpu, :matmul_cuda, :matmul (both) and :matmul_test.
"""

load("//build_defs:cuda.bzl", "cuda_library")

def kernel_op(name, deps = [], cpu_srcs = [], cuda_srcs = [], test_deps = [], test_data = [], test_size = "small"):
    """Declares the libraries and the test of one op.

    Args:
      name: the op's file stem.
      deps: libraries both halves need (other ops' :*_cpu / :*_cuda are added by the caller).
      cpu_srcs: extra CPU sources.
      cuda_srcs: extra .cu sources.
      test_deps: extra test dependencies.
      test_data: runfiles of the test (golden fixtures).
      test_size: Bazel test size.
    """
    native.cc_library(
        name = name + "_cpu",
        srcs = [name + "_cpu.cc"] + cpu_srcs,
        hdrs = [name + ".h"],
        deps = deps + [
            "//kernels/base",
            "//kernels/ops:blas_layout",
            "@system//:absl",
            "@system//:lapacke",
            "@system//:openblas",
        ],
    )
    cuda_library(
        name = name + "_cuda",
        srcs = [name + "_cuda.cu"] + cuda_srcs,
        deps = [
            ":" + name + "_cpu",
            "//kernels/base:gpu",
        ] + [d.replace("_cpu", "_cuda") for d in deps if d.endswith("_cpu")],
    )
    native.cc_library(
        name = name,
        deps = [":" + name + "_cpu", ":" + name + "_cuda"],
    )
    native.cc_test(
        name = name + "_test",
        size = test_size,
        srcs = [name + "_test.cc"],
        data = test_data,
        deps = [
            ":" + name,
            "//kernels/testing",
            "@system//:gtest_main",
        ] + test_deps,
    )
