"""Checks an installed CUDA build of advx without a GPU.

Run with the Python that advx was installed into (a CUDA build of torch):
  python tools/check_cuda_build.py [--archs 80-real,90-real]
It fails unless build_info() reports CUDA and the expected architectures, every
advx operator has a CUDA (and a CPU) kernel registered, and the GPU code embedded
in the extension holds exactly the architectures that build_info() reports.
"""
import argparse
import pathlib
import struct
import sys

FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
KINDS = {1: "ptx", 2: "sm"}


def fatbin_archs(path):
    """(kind, arch) of every entry of every fat binary in a shared object, e.g. ('sm', 90)."""
    data = pathlib.Path(path).read_bytes()
    found = set()
    start = data.find(FATBIN_MAGIC)
    while start != -1:
        _version, header, size = struct.unpack_from("<HHQ", data, start + 4)
        pos, end = start + header, start + header + size
        while pos < end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, pos)
            arch = struct.unpack_from("<I", data, pos + 28)[0]
            found.add((KINDS.get(kind, str(kind)), arch))
            pos += entry_header + payload
        start = data.find(FATBIN_MAGIC, end)
    return found


def expected_archs(cmake_archs):
    """CMake's notation ('80-real', '90') to fat binary entries."""
    want = set()
    for a in filter(None, cmake_archs.split(",")):
        num, _, kind = a.partition("-")
        num = int("".join(c for c in num if c.isdigit()))
        if kind in ("", "real"):
            want.add(("sm", num))
        if kind in ("", "virtual"):
            want.add(("ptx", num))
    return want


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="80-real,90-real",
                        help="the architectures build_info() must report (CMake notation)")
    args = parser.parse_args()

    import torch
    import advx
    from advx import _C

    errors = []
    info = advx.build_info()
    print(f"advx from {pathlib.Path(advx.__file__).parent}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), build_info: {info}")
    if not info["cuda"]:
        errors.append("build_info()['cuda'] is False: the CUDA kernels were not built")
    if info["cuda_archs"] != args.archs:
        errors.append(f"build_info()['cuda_archs'] is {info['cuda_archs']!r}, expected {args.archs!r}")

    ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("advx::"))
    if not ops:
        errors.append("no advx operators are registered")
    for op in ops:
        for key in ("CPU", "CUDA"):
            if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key):
                errors.append(f"{op} has no {key} kernel")
    print(f"{len(ops)} operators, each with a CPU and a CUDA kernel: {', '.join(ops)}")

    found = fatbin_archs(_C.__file__)
    want = expected_archs(info["cuda_archs"])
    print(f"GPU code in {pathlib.Path(_C.__file__).name}: {sorted(found)}")
    if found != want:
        errors.append(f"the binary holds {sorted(found)} but build_info() says {sorted(want)}")

    for e in errors:
        print(f"cuda build check: FAIL: {e}")
    if not errors:
        print("cuda build check: ok")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
