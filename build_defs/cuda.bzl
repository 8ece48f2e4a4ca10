"""`cuda_library`: compiles .cu files with nvcc into PIC objects that cc rules link.

Where the CUDA toolkit was found (@local_cuda//:defs.bzl CUDA_ENABLED), each .cu source becomes
one `<name>_objs/<src>.pic.o`, built for every arch in CUDA_ARCHS (sm_80, sm_90) with -O3, and
wrapped in a cc_library that also links cudart. Without a toolkit the library is header-only, and
code guards its CUDA paths with `#if SIGMATUNE_WITH_CUDA` (defined by @local_cuda//:cuda_headers).
"""

load("@local_cuda//:defs.bzl", "CUDA_ARCHS", "CUDA_ENABLED", "NVCC")

def _flags(compilation_contexts, field, prefix):
    out = []
    for c in compilation_contexts:
        for value in getattr(c, field).to_list():
            out.extend([prefix, value] if prefix == "-isystem" else [prefix + value])
    return out

def _nvcc_compile_impl(ctx):
    compilation_contexts = [d[CcInfo].compilation_context for d in ctx.attr.deps]
    headers = depset(ctx.files.hdrs, transitive = [c.headers for c in compilation_contexts])

    include_flags = (["-I.", "-I" + ctx.genfiles_dir.path] +
                     _flags(compilation_contexts, "quote_includes", "-I") +
                     _flags(compilation_contexts, "includes", "-I") +
                     _flags(compilation_contexts, "system_includes", "-isystem"))
    define_flags = _flags(compilation_contexts, "defines", "-D")
    gencode = []
    for arch in CUDA_ARCHS:
        gencode.append("-gencode=arch=compute_%s,code=sm_%s" % (arch, arch))

    outputs = []
    for src in ctx.files.srcs:
        obj = ctx.actions.declare_file("%s_objs/%s.pic.o" % (ctx.label.name, src.basename[:-len(".cu")]))
        outputs.append(obj)
        args = (["-std=c++17", "-O3", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr", "-lineinfo"] +
                gencode + include_flags + define_flags + ctx.attr.copts +
                ["-c", src.path, "-o", obj.path])
        ctx.actions.run_shell(
            outputs = [obj],
            inputs = depset([src], transitive = [headers]),
            # nvcc keeps its intermediates in $TMPDIR; give it a private one.
            command = 'export TMPDIR="$(mktemp -d)"; trap "rm -rf $TMPDIR" EXIT; "%s" "$@"' % NVCC,
            arguments = args,
            mnemonic = "NvccCompile",
            progress_message = "nvcc %s" % src.short_path,
            use_default_shell_env = True,
        )
    return [DefaultInfo(files = depset(outputs))]

_nvcc_compile = rule(
    implementation = _nvcc_compile_impl,
    attrs = {
        "srcs": attr.label_list(allow_files = [".cu"]),
        "hdrs": attr.label_list(allow_files = True),
        "deps": attr.label_list(providers = [CcInfo]),
        "copts": attr.string_list(),
    },
)

def cuda_library(name, srcs = [], hdrs = [], deps = [], copts = [], **kwargs):
    """A cc_library whose .cu sources are compiled by nvcc (a header-only library without CUDA).

    Args:
      name: target name.
      srcs: .cu sources.
      hdrs: public headers.
      deps: cc dependencies (their headers, includes and defines reach nvcc).
      copts: extra nvcc flags.
      **kwargs: passed to the cc_library (visibility, testonly, ...).
    """
    if not CUDA_ENABLED:
        native.cc_library(name = name, hdrs = hdrs, deps = deps, **kwargs)
        return
    cuda_deps = ["@local_cuda//:cuda_headers", "@local_cuda//:cudart"]
    _nvcc_compile(
        name = name + "_nvcc",
        srcs = srcs,
        hdrs = hdrs,
        deps = deps + cuda_deps,
        copts = copts,
        testonly = kwargs.get("testonly", False),
        visibility = ["//visibility:private"],
    )
    native.cc_library(
        name = name,
        srcs = [":" + name + "_nvcc"],
        hdrs = hdrs,
        deps = deps + cuda_deps,
        **kwargs
    )
