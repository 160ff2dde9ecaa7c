"""compiler.precompile: a converted model's kernels compiled before its first call, on two cores."""
import os
import pickle
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import compiler
from compiler import build, library_cache, precompile
from compiler.layers import request_of
from targets import host_target


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty kernel cache folder and process cache (what a new machine starts with)."""
    monkeypatch.setattr(library_cache, "_DIR", [tmp_path])
    build.clear_cache()
    yield tmp_path
    build.clear_cache()


def _jobs(count: int):
    return [precompile.Job(request_of(f"Conv2d({c}, 8, 3, padding=1)", (1, c, 10, 12)), host_target(), False)
            for c in range(1, count + 1)]


def _count_compiles(monkeypatch) -> list:
    """Kernels this process compiles from now on (cache hits load a library instead)."""
    compiled, real_compile = [], library_cache.tvm.compile
    monkeypatch.setattr(library_cache.tvm, "compile", lambda *a, **k: compiled.append(1) or real_compile(*a, **k))
    return compiled


def test_helper_compiles_from_the_back_and_announces_each_job(fresh_cache, monkeypatch):
    jobs = _jobs(3)
    env = dict(os.environ, TVM_CONV_CACHE_DIR=str(fresh_cache))
    done = subprocess.run([sys.executable, "-m", "compiler.precompile"], env=env, capture_output=True, check=True,
                          input=pickle.dumps([(j.request, str(j.target), j.database) for j in jobs]))
    lines = [line for line in done.stdout.decode().splitlines() if line.split()[0] in ("claim", "done")]
    assert lines == ["claim 2", "done 2", "claim 1", "done 1", "claim 0", "done 0"]
    assert len(list((fresh_cache / "kernels").glob("*.so"))) == 3
    compiled = _count_compiles(monkeypatch)
    for job in jobs:                  # this process finds the helper's libraries
        build.get_kernel(job.request, job.target, prepacked=True, database=False)
    assert compiled == []


def test_the_two_processes_share_the_jobs(fresh_cache, monkeypatch):
    """With this process slowed down, the helper compiles the jobs at the back; every kernel ends up
    in the process cache, each compiled once by one of the two."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    jobs = _jobs(precompile.MIN_JOBS)
    real_compile = library_cache.tvm.compile

    def slow_compile(*args, **kwargs):
        time.sleep(1.5)                   # the helper imports torch and TVM meanwhile
        return real_compile(*args, **kwargs)

    monkeypatch.setattr(library_cache.tvm, "compile", slow_compile)
    compiled = _count_compiles(monkeypatch)
    precompile.compile_all(jobs)
    assert all(build.cached(j.request, j.target, True, False) for j in jobs)
    assert 0 < len(compiled) < len(jobs)
    assert len(list((fresh_cache / "kernels").glob("*.so"))) == len(jobs)


def test_one_core_or_few_jobs_start_no_helper(fresh_cache, monkeypatch):
    started = []
    monkeypatch.setattr(precompile, "_Helper", lambda todo: started.append(todo))
    precompile.compile_all(_jobs(2))                                    # under MIN_JOBS
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    precompile.compile_all(_jobs(precompile.MIN_JOBS + 1))             # one core
    assert started == []
    assert all(build.cached(j.request, j.target, True, False) for j in _jobs(precompile.MIN_JOBS + 1))


def test_convert_compiles_every_kernel_before_the_first_call(fresh_cache):
    model = nn.Sequential(*[nn.Sequential(nn.Conv2d(c, c + 1, 3, padding=1), nn.ReLU()) for c in range(3, 13)]).eval()
    x = torch.randn(2, 3, 9, 11)
    fast = compiler.convert(model, x)
    jobs = precompile.model_jobs(fast, (x,))
    assert len(set(jobs)) == 10 and all(build.cached(j.request, j.target, True, j.database) for j in jobs)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_warm_disk_cache_does_not_wait_for_the_helper(fresh_cache, monkeypatch):
    """In a new process (process cache empty) whose disk cache has every library, this process loads
    them all before the helper has even started: it must not wait for the helper."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    jobs = _jobs(precompile.MIN_JOBS)
    precompile.compile_all(jobs)
    build.clear_cache()
    waits = []
    real_read = precompile._Helper._read
    monkeypatch.setattr(precompile._Helper, "_read", lambda self, block: waits.append(block) or real_read(self, block))
    compiled = _count_compiles(monkeypatch)
    precompile.compile_all(jobs)
    assert compiled == [] and True not in waits
