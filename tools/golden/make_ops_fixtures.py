#!/usr/bin/env python3
"""Golden fixtures for the numeric core (kernels/ops), made with PyTorch on the CPU.

Run by hand, from the repository root, in a virtual environment that has torch and safetensors:
    python tools/golden/make_ops_fixtures.py
It rewrites tests/testdata/ops/*.safetensors; each file's __metadata__ records the versions used,
and tests/testdata/README.md lists them. CI never runs this (the fixtures are committed).
"""
import os
import platform

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "testdata", "ops")
META = {
    "generator": "tools/golden/make_ops_fixtures.py",
    "torch": torch.__version__,
    "python": platform.python_version(),
}


def save(name, tensors):
    path = os.path.join(OUT, name + ".safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=META)
    print("wrote", os.path.normpath(path), sorted(tensors))


def matmul():
    g = torch.Generator().manual_seed(1)
    t = {}
    for dt, tag in [(torch.float32, "f32"), (torch.float64, "f64")]:
        a = torch.randn(7, 5, generator=g, dtype=torch.float64).to(dt)
        b = torch.randn(3, 5, generator=g, dtype=torch.float64).to(dt)  # used transposed
        c0 = torch.randn(7, 3, generator=g, dtype=torch.float64).to(dt)
        t[f"{tag}_a"], t[f"{tag}_b"], t[f"{tag}_c0"] = a, b, c0
        # C = 0.5 * A @ B^T - 2 * C0, in float64 so the reference is exact to our tolerance.
        t[f"{tag}_expected"] = (0.5 * a.double() @ b.double().T - 2.0 * c0.double())
    a = torch.randn(9, 6, generator=g).to(torch.bfloat16)
    b = torch.randn(6, 4, generator=g).to(torch.bfloat16)
    t["bf16_a"], t["bf16_b"] = a, b
    t["bf16_expected"] = a.double() @ b.double()  # fp32 accumulation must land within f32 rounding
    save("matmul", t)


def covariance():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(111, 7, generator=g)
    c0 = torch.randn(7, 7, generator=g)
    c0 = c0 + c0.T
    t = {"x": x, "c0": c0, "expected": c0.double() + 0.25 * (x.double().T @ x.double())}
    xb = torch.randn(64, 9, generator=g).to(torch.bfloat16)
    t["bf16_x"] = xb
    t["bf16_expected"] = xb.double().T @ xb.double()
    save("covariance", t)


def eigh():
    g = torch.Generator().manual_seed(3)
    t = {}
    for n in (1, 7, 33):
        m = torch.randn(n, n, generator=g, dtype=torch.float64)
        a = m + m.T
        w, v = torch.linalg.eigh(a)  # ascending, like LAPACK syevd
        t[f"n{n}_a"], t[f"n{n}_w"], t[f"n{n}_v"] = a, w, v
    save("eigh", t)


def svd():
    g = torch.Generator().manual_seed(4)
    t = {}
    for m, n in ((7, 5), (5, 7), (1, 7), (33, 33)):
        a = torch.randn(m, n, generator=g, dtype=torch.float64)
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        key = f"m{m}n{n}"
        t[key + "_a"], t[key + "_u"], t[key + "_s"], t[key + "_vh"] = a, u, s, vh
    save("svd", t)


def qr():
    g = torch.Generator().manual_seed(5)
    t = {}
    for m, n in ((7, 5), (5, 7), (33, 33)):
        a = torch.randn(m, n, generator=g, dtype=torch.float64)
        q, r = torch.linalg.qr(a, mode="reduced")  # LAPACK geqrf/orgqr sign convention
        key = f"m{m}n{n}"
        t[key + "_a"], t[key + "_q"], t[key + "_r"] = a, q, r
    save("qr", t)


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    matmul()
    covariance()
    eigh()
    svd()
    qr()
