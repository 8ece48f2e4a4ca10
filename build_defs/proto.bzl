"""`cc_grpc_proto_library`: C++ (and gRPC) code from .proto files, via the host protoc.

Protos live under a package directory (e.g. //proto) and import each other relative to it
(`import "sigmatune/v1/job.proto";`). Generated headers are included the same way
(`#include "sigmatune/v1/job.pb.h"`).
"""

load("@system//:defs.bzl", "GRPC_CPP_PLUGIN", "PROTOC")

def cc_grpc_proto_library(name, srcs, deps = [], grpc = True, **kwargs):
    """Generates and compiles C++ for `srcs`.

    Args:
      name: the cc_library's name.
      srcs: .proto files of this package.
      deps: other cc_grpc_proto_library targets whose protos `srcs` import.
      grpc: also generate gRPC service stubs.
      **kwargs: passed to the cc_library.
    """
    outs_h = []
    outs_cc = []
    for src in srcs:
        stem = src[:-len(".proto")]
        outs_h.append(stem + ".pb.h")
        outs_cc.append(stem + ".pb.cc")
        if grpc:
            outs_h.append(stem + ".grpc.pb.h")
            outs_cc.append(stem + ".grpc.pb.cc")

    pkg = native.package_name()
    out_dir = "$(GENDIR)/" + pkg if pkg else "$(GENDIR)"
    cmd = "%s -I%s --cpp_out=%s" % (PROTOC, pkg or ".", out_dir)
    if grpc:
        cmd += " --grpc_out=%s --plugin=protoc-gen-grpc=%s" % (out_dir, GRPC_CPP_PLUGIN)
    cmd += " " + " ".join(["%s/%s" % (pkg, s) if pkg else s for s in srcs])

    native.genrule(
        name = name + "_gen",
        srcs = srcs + [d + "_srcs" for d in deps],
        outs = outs_h + outs_cc,
        cmd = cmd,
        message = "protoc %s" % " ".join(srcs),
        visibility = ["//visibility:private"],
    )
    native.filegroup(
        name = name + "_srcs",
        srcs = srcs + [d + "_srcs" for d in deps],
    )
    native.cc_library(
        name = name,
        srcs = outs_cc,
        hdrs = outs_h,
        includes = ["."],
        deps = deps + ["@system//:protobuf"] + (["@system//:grpc++"] if grpc else []),
        **kwargs
    )
