"""CPU kernels as shared libraries in an on-disk cache, shared by all processes of this user.

Why a file at all: a kernel loaded from a ``.so`` has its parallel-launch pointer in memory we can
reach (``threads.attach`` points it at torch's OpenMP runtime); TVM's in-memory JIT hides it.
The file is kept, so a later process that schedules the same kernel loads it instead of compiling.
Measured here (five suite layers, best of three, busy 2-core VM): the in-memory path (``tvm.compile``
plus the JIT) took 170-240 ms per kernel, writing the object file and linking it with g++ 15-80 ms
more on a miss (the link alone ~35 ms), and a hit 16-39 ms in all, scheduling included (the key
~4 ms, the ``dlopen`` <1 ms).

The key is the SHA-256 of everything the library is made from: the scheduled IRModule as TVM's JSON
serialisation (complete, unlike printed text), the target string, TVM's version and the identity
(size, mtime) of the TVM compiler library, and ``FORMAT``.  Files are written under a temporary name
and renamed into place, so concurrent processes (pytest -n, several tuning workers) never load half a
file.  Nothing is ever evicted: a kernel is 20-60 KB; delete the folder to reclaim the space.

The folder: ``$TVM_CONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/tvm-conv-compiler``, else
``~/.cache/tvm-conv-compiler``; a process-private temporary folder if that one cannot be written.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional, Tuple

import tvm

from targets.cuda import compile_context

#: Bump when what goes into a cached library changes in a way the key does not see.
FORMAT = "1"

_DIR: list = []
_STATE: dict = {}
_LOCK = threading.Lock()


def cache_dir() -> Path:
    """The cache folder (created on first use)."""
    with _LOCK:
        if not _DIR:
            base = os.environ.get("TVM_CONV_CACHE_DIR") or os.path.join(
                os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                "tvm-conv-compiler")
            try:
                os.makedirs(base, exist_ok=True)
                if not os.access(base, os.W_OK | os.X_OK):
                    raise PermissionError(base)
            except OSError:
                base = tempfile.mkdtemp(prefix="tvm-conv-compiler-")
            _DIR.append(Path(base))
        return _DIR[0]


def _tvm_identity() -> str:
    lib = Path(tvm.__file__).parent / "lib" / "libtvm_compiler.so"
    try:
        st = lib.stat()
        return f"{tvm.__version__}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return str(tvm.__version__)


def kernel_key(mod: tvm.IRModule, target) -> str:
    """The cache key of ``mod`` compiled for ``target``."""
    h = hashlib.sha256()
    for part in (FORMAT, _tvm_identity(), str(target), tvm.ir.save_json(mod)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def publish(path: Path, write) -> None:
    """``write(temporary_path)`` then rename it to ``path`` (atomic: readers see all or nothing)."""
    tmp = path.with_name(f".{os.getpid()}.{threading.get_ident()}.{path.name}")   # same suffix
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def is_host_cpu(target) -> bool:
    """An llvm target without a foreign ``mtriple``: its kernels run (and are cached) in this process."""
    return target.kind.name == "llvm" and not target.attrs.get("mtriple")


def exports() -> bool:
    """Whether kernels are exported to cached libraries (a C++ compiler is found, none failed)."""
    from tvm.support import cc
    return not _STATE.get("export_failed") and cc.get_cc() is not None


def load(mod: tvm.IRModule, target) -> Tuple[object, Optional[Path]]:
    """``(executable, library path)`` of ``mod`` compiled for ``target``.

    For the host CPU (an llvm target without a foreign ``mtriple``) the executable is loaded from the
    cached library (compiled, exported and cached first on a miss) and its parallel loops are handed
    to ``threads.attach``.  Otherwise, or when exporting fails (no C++ compiler: one warning, then
    this process stops trying), it is ``tvm.compile``'s in-memory executable and the path is None.
    Compile errors propagate."""
    if not is_host_cpu(target) or _STATE.get("export_failed"):
        with compile_context(target):                   # CUDA: pipelined copies become cp.async
            return tvm.compile(mod, target=target), None
    path = cache_dir() / "kernels" / f"{kernel_key(mod, target)}.so"
    if not path.exists():
        executable = tvm.compile(mod, target=target)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            publish(path, executable.export_library)
        except Exception as err:  # noqa: BLE001 - keep the in-memory executable
            _STATE["export_failed"] = True
            warnings.warn(f"cannot export kernels to shared libraries ({type(err).__name__}: {err}); "
                          f"they are compiled in memory, not cached, and use TVM's thread pool",
                          RuntimeWarning, stacklevel=3)
            return executable, None
    from . import threads
    module = tvm.runtime.load_module(str(path))
    threads.attach(path)
    return CachedExecutable(module, path, mod, target), path


class CachedExecutable(tvm.runtime.Executable):
    """An executable loaded from a cached library.  ``export_library`` copies that file (what
    exporting the compiled module writes), or compiles the module again for other options."""

    def __init__(self, module, path: Path, mod: tvm.IRModule, target) -> None:
        super().__init__(module)
        self.path, self._mod, self._target = path, mod, target

    def export_library(self, file_name, **kwargs):
        if any(v is not None for v in kwargs.values()) or not str(file_name).endswith(".so"):
            return tvm.compile(self._mod, target=self._target).export_library(file_name, **kwargs)
        shutil.copyfile(self.path, file_name)
        return None
