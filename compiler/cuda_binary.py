"""Device code for CUDA builds made on machines without a GPU.

TVM 0.27 embeds only CUDA *source* in a CUDA module when no driver is present (and a GPU host's
loader cannot load source).  So the project runs nvcc itself for the requested architecture and
packs the resulting fatbin into the library in place of the source: the library's imports blob is
TVM's own serialisation (``runtime.ModulePackImportsToTensor``), in which the CUDA module's payload
is ``[format][function table][code]``; only the format and the code are replaced.
"""
from __future__ import annotations

import os
import struct
from typing import Tuple

import tvm_ffi


def device_source(executable) -> str:
    """The CUDA C source of a compiled executable's device module."""
    mod = executable.mod if hasattr(executable, "mod") else executable
    cuda = [m for m in mod.imports if m.kind == "cuda"]
    if not cuda:
        raise ValueError("the build has no CUDA device module (is the schedule bound to GPU threads?)")
    return cuda[0].inspect_source()


def compile_device_code(source: str, target, fmt: str = "fatbin") -> bytes:
    """nvcc on ``source`` for the target's arch (``fatbin``, ``cubin`` or ``ptx``)."""
    from tvm.support import nvcc

    arch = str(target.attrs["arch"])
    with target:
        return bytes(nvcc.compile_cuda(source, target_format=fmt, arch=arch, compiler="nvcc"))


def _u64(data: bytes, offset: int) -> Tuple[int, int]:
    return struct.unpack_from("<Q", data, offset)[0], offset + 8


def _string(data: bytes, offset: int) -> Tuple[bytes, int]:
    size, offset = _u64(data, offset)
    return data[offset:offset + size], offset + size


def _pack_string(value: bytes) -> bytes:
    return struct.pack("<Q", len(value)) + value


def replace_device_code(blob: bytes, source: str, binary: bytes, fmt: str = "fatbin") -> bytes:
    """The imports blob with the CUDA module's source replaced by ``binary`` of format ``fmt``."""
    total, offset = _u64(blob, 0)
    body = blob[8:8 + total]
    # import tree: row pointers and child indices, each a u64 count then u64 values
    offset = 0
    for _ in range(2):
        count, offset = _u64(body, offset)
        offset += 8 * count
    out = bytearray(body[:offset])
    code = source.encode()
    replaced = 0
    while offset < len(body):
        kind, offset = _string(body, offset)
        out += _pack_string(kind)
        if kind == b"_lib":
            continue
        payload, offset = _string(body, offset)
        if kind == b"cuda":
            old_fmt, p = _string(payload, 0)
            if not payload.endswith(code) or payload[-len(code) - 8:-len(code)] != struct.pack("<Q", len(code)):
                raise ValueError("unexpected layout of the CUDA module's payload")
            table = payload[p:len(payload) - len(code) - 8]
            payload = _pack_string(fmt.encode()) + table + _pack_string(binary)
            replaced += 1
        out += _pack_string(payload)
    if replaced != 1:
        raise ValueError(f"expected one CUDA module in the library, found {replaced}")
    return struct.pack("<Q", len(out)) + bytes(out)


def _as_c(blob: bytes, symbol_prefix: str = "") -> str:
    """The imports blob as the C file TVM's ``ModulePackImportsToC`` writes."""
    rows = ",\n  ".join(",".join(f"0x{b:02x}" for b in blob[i:i + 20]) for i in range(0, len(blob), 20))
    name = f"{symbol_prefix}__tvm_ffi__library_bin"
    return ("#ifdef __cplusplus\nextern \"C\" {\n#endif\n"
            f"extern const unsigned char {name}[];\nconst unsigned char {name}[{len(blob)}] = {{\n  {rows}\n}};\n"
            "#ifdef __cplusplus\n}\n#endif\n")


def fpack_imports_with(binary: bytes, source: str, fmt: str = "fatbin"):
    """An ``export_library(fpack_imports=...)`` hook that embeds ``binary`` instead of the source."""
    def pack(mod, is_system_lib, symbol_prefix, workspace_dir):
        blob = bytes(tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(mod).numpy())
        path = os.path.join(workspace_dir, f"{symbol_prefix}devc.c")
        with open(path, "w") as f:
            f.write(_as_c(replace_device_code(blob, source, binary, fmt), symbol_prefix))
        return path
    return pack


FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)


def embedded_fatbins(library_path: str):
    """The fatbin images inside a file (an exported library), found by their magic and header:
    ``u32 magic, u16 version, u16 header size, u64 payload size``."""
    data = open(library_path, "rb").read()
    images, at = [], data.find(FATBIN_MAGIC)
    while at >= 0:
        _, header, size = struct.unpack_from("<HHQ", data, at + 4)
        images.append(data[at:at + header + size])
        at = data.find(FATBIN_MAGIC, at + header + size)
    return images


__all__ = ["device_source", "compile_device_code", "replace_device_code", "fpack_imports_with",
           "embedded_fatbins"]
