"""`fuzz_target`: a libFuzzer-style target plus its smoke test.

    fuzz_target(name = "safetensors_fuzzer", srcs = ["safetensors_fuzzer.cc"], deps = [...],
                corpus = glob(["testdata/fuzz/safetensors/*"]))

defines :safetensors_fuzzer_lib (the target's code), :safetensors_fuzzer_smoke_test (a cc_test that
runs the seeds and deterministic mutations of them through the target with gcc:
tests/fuzz/fuzz_smoke_main.cc), and :safetensors_fuzzer, the real libFuzzer binary, tagged manual
(gcc cannot link it): `tools/fuzz.sh //formats:safetensors_fuzzer` builds it with clang.
"""

def fuzz_target(name, srcs, deps = [], corpus = [], iterations = 2000):
    native.cc_library(
        name = name + "_lib",
        testonly = 1,
        srcs = srcs,
        deps = deps,
        alwayslink = 1,
    )
    native.cc_binary(
        name = name,
        testonly = 1,
        deps = [":" + name + "_lib"],
        linkopts = ["-fsanitize=fuzzer"],
        data = corpus,
        tags = ["manual"],
    )
    native.cc_test(
        name = name + "_smoke_test",
        size = "small",
        deps = [":" + name + "_lib", "//tests/fuzz:fuzz_smoke_main"],
        data = corpus,
        args = ["--iterations=%d" % iterations] + ["$(location %s)" % c for c in corpus],
    )
