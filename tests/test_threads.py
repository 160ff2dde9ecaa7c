"""CPU kernels on torch's OpenMP threads (compiler/threads.py) and the on-disk kernel cache."""
import ctypes
import os
import threading
from pathlib import Path

import pytest
import torch
import tvm

import compiler
from compiler import build, library_cache, threads

from reference import assert_matches_torch

LAYERS = [
    ("Conv2d", (16, 32, 3), dict(padding=1), (2, 16, 20, 20)),
    ("Conv2d", (32, 32, 3), dict(stride=2, padding=1, groups=32, bias=False), (1, 32, 28, 28)),
    ("ConvTranspose2d", (16, 8, 4), dict(stride=2, padding=1), (1, 16, 10, 10)),
    ("Conv2d", (3, 16, 7), dict(stride=2, padding=3, padding_mode="reflect"), (1, 3, 32, 32)),
]


def _tvm_pool_launch() -> int:
    lib = ctypes.CDLL(str(Path(tvm.__file__).parent / "lib" / "libtvm_runtime.so"),
                      mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    return ctypes.cast(lib.TVMBackendParallelLaunch, ctypes.c_void_p).value


@pytest.fixture
def launcher():
    launch = threads.launcher()
    assert launch is not None, "the OpenMP launcher did not build here"
    return launch


@pytest.fixture
def openmp_pool(monkeypatch):
    """Kernels loaded in the test run on OpenMP; afterwards the cached ones are reloaded that way
    (one library file is one dlopen handle: reloading resets its hooks for every kernel sharing it)."""
    monkeypatch.delenv("TVM_CONV_THREADS", raising=False)
    build.clear_cache()
    yield
    build.clear_cache()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,args,kwargs,shape", LAYERS, ids=str)
def test_kernels_on_openmp_match_torch(launcher, openmp_pool, name, args, kwargs, shape, dtype):
    m = getattr(compiler, name)(*args, **kwargs, dtype=dtype)
    x = torch.randn(*shape, dtype=dtype)
    before = launcher.launches()
    assert_matches_torch(m, x)
    assert m.kernel.library and Path(m.kernel.library).is_file()
    assert threads.hook(m.kernel.library) == launcher.launch          # the pointer really is ours
    assert launcher.launches() > before                                # and the kernel went through it
    assert_matches_torch(m, torch.randn(*shape, dtype=dtype))          # packed weights kept, second call


def test_team_follows_torch_set_num_threads(launcher, openmp_pool):
    m = compiler.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(1, 16, 32, 32)
    threads_before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert_matches_torch(m, x)
        assert launcher.last_team() == 1
        torch.set_num_threads(2)
        assert_matches_torch(m, x)
        assert launcher.last_team() == 2
    finally:
        torch.set_num_threads(threads_before)


def test_kernel_called_from_another_thread(launcher, openmp_pool):
    m = compiler.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(1, 16, 32, 32)
    m(x)
    seen = {}

    def work():
        seen["y"] = m(x)
        seen["team"], seen["torch"] = launcher.last_team(), torch.get_num_threads()

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    torch.testing.assert_close(seen["y"], m(x))
    assert seen["team"] == seen["torch"]


def test_tvm_pool_on_request(launcher, openmp_pool, monkeypatch):
    monkeypatch.setenv("TVM_CONV_THREADS", "tvm")
    build.clear_cache()
    m = compiler.Conv2d(16, 16, 3, padding=1)
    before = launcher.launches()
    assert_matches_torch(m, torch.randn(1, 16, 32, 32))
    assert threads.hook(m.kernel.library) == _tvm_pool_launch()
    assert launcher.launches() == before
    monkeypatch.setenv("TVM_CONV_THREADS", "bogus")
    with pytest.raises(ValueError, match="TVM_CONV_THREADS"):
        threads.mode()


def test_launcher_splits_tasks_and_reports_errors(launcher):
    """The C launcher alone: every thread of the team runs once, with the team size as num_task."""
    env_type = type("Env", (ctypes.Structure,), {"_fields_": [("sync_handle", ctypes.c_void_p),
                                                             ("num_task", ctypes.c_int32)]})
    lambda_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(env_type), ctypes.c_void_p)
    launch = ctypes.CFUNCTYPE(ctypes.c_int, lambda_type, ctypes.c_void_p, ctypes.c_int)(launcher.launch)
    calls, lock = [], threading.Lock()

    def task(task_id, env, cdata):
        with lock:
            calls.append((task_id, env.contents.num_task))
        return 7 if task_id == 1 else 0

    callback = lambda_type(task)
    assert launch(callback, None, 2) == 7                 # a failing task's code comes back
    assert sorted(calls) == [(0, 2), (1, 2)]
    calls.clear()
    assert launch(callback, None, 1) == 0
    assert calls == [(0, 1)]


def test_launcher_unavailable_warns_once_and_keeps_tvm_pool(openmp_pool, monkeypatch):
    m = compiler.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(1, 16, 32, 32)
    m(x)
    monkeypatch.setattr(threads, "_STATE", {})
    monkeypatch.setattr(threads.omp_hooks, "torch_openmp", lambda: (_ for _ in ()).throw(RuntimeError("no omp")))
    with pytest.warns(RuntimeWarning, match="TVM's thread pool"):
        assert threads.launcher() is None
    assert threads.attach(m.kernel.library) is False      # no second warning: pytest would fail on it
    assert threads.hook(m.kernel.library) == _tvm_pool_launch()
    assert_matches_torch(m, x)


def test_attach_switches_pools_both_ways(launcher, openmp_pool):
    m = compiler.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(1, 16, 32, 32)
    m(x)
    for pool, address in (("tvm", _tvm_pool_launch()), ("openmp", launcher.launch)):
        assert threads.attach(m.kernel.library, pool) == (pool == "openmp")
        assert threads.hook(m.kernel.library) == address
        assert_matches_torch(m, x)


def test_disk_cache_hit_skips_compiling(openmp_pool, monkeypatch, tmp_path):
    monkeypatch.setattr(library_cache, "cache_dir", lambda: tmp_path)
    m = compiler.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(1, 8, 12, 12)
    m(x)
    library = Path(m.kernel.library)
    assert library.parent == tmp_path / "kernels"
    stamp = library.stat().st_mtime_ns
    build.clear_cache()
    monkeypatch.setattr(tvm, "compile", lambda *a, **k: pytest.fail("compiled despite the cache"))
    assert_matches_torch(m, x)
    assert m.kernel.library == str(library) and library.stat().st_mtime_ns == stamp


def test_cache_key_covers_module_and_target():
    from compiler.request import KernelRequest
    from targets import host_target
    spec = compiler.ConvSpec.conv2d(8, 8, 3, 1, 1, 1, 1, True, "zeros")
    target = host_target()

    def scheduled(width):
        return build.schedule(KernelRequest(spec, (1, 8, 12, width), "float32"), target).mod

    a, b = scheduled(12), scheduled(14)
    key = library_cache.kernel_key(a, target)
    assert key == library_cache.kernel_key(scheduled(12), target)
    assert key != library_cache.kernel_key(b, target)
    other = tvm.target.Target({**target.export(), "mcpu": "x86-64"})
    assert key != library_cache.kernel_key(a, other)


def test_export_failure_falls_back_to_memory(openmp_pool, monkeypatch, tmp_path):
    monkeypatch.setattr(library_cache, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(library_cache, "_STATE", {})

    def no_linker(self, *args, **kwargs):
        raise RuntimeError("no linker")

    monkeypatch.setattr(tvm.runtime.Executable, "export_library", no_linker)
    m = compiler.Conv2d(8, 4, 3)
    with pytest.warns(RuntimeWarning, match="cannot export"):
        assert_matches_torch(m, torch.randn(1, 8, 10, 10))
    assert m.kernel.library is None
    assert not list(tmp_path.rglob("*.so"))
