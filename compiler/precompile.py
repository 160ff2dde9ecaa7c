"""Compile a model's CPU kernels on two cores before its first call: a helper process takes a share.

Why a process: ``tvm.compile`` holds the GIL (two threads compiled eight 3x3 kernels in 2.22 s, one
in 2.31 s), and a converted ResNet-50's 27 kernels took 10.1-10.5 s one after another.  The helper
is started as ``python -m compiler.precompile`` and given its jobs as pickled requests on stdin, not
through multiprocessing (whose "spawn" re-runs an unguarded user script, and whose "fork" copies a
process that already runs torch's OpenMP threads).  It writes each library into the shared kernel
cache (``library_cache``); this process then finds it there, as any later process would.

The two split the jobs from opposite ends: this process from the front, the helper from the back,
announcing each job before it starts it (``claim i`` on stdout).  When this process reaches a job
the helper claimed, it waits for the helper's remaining ones; a job both happen to compile is
written twice, atomically, to the same file.  Where there is nothing to gain (one core, under
``MIN_JOBS`` uncompiled kernels, no C++ compiler to export libraries with, other targets) the
kernels are compiled here, one after another, as the first call would.
"""
from __future__ import annotations

import os
import pickle
import select
import subprocess
import sys
from typing import Iterable, List, NamedTuple

from tvm.target import Target

from . import build, library_cache
from .request import KernelRequest

#: Uncompiled kernels below which no helper is started: it takes ~2.5 s to import torch and TVM on
#: this 2-core VM, about as long as seven kernels take to compile (0.3-0.4 s each).
MIN_JOBS = 8


class Job(NamedTuple):
    """One kernel as the modules ask ``build.get_kernel`` for it."""

    request: KernelRequest
    target: Target
    database: object            # a folder, None (the default one) or False (hand-written only)


def model_jobs(model, inputs) -> List[Job]:
    """The kernels a converted ``model``'s forward on ``inputs`` asks for (found on meta tensors)."""
    from .model_tuning import capture
    from .modules import _device_target
    _, calls = capture(model, inputs)
    jobs = []
    for path, request in calls:
        module = model.get_submodule(path)
        target = module.target or _device_target(module.weight.device)
        jobs.append(Job(request, target if isinstance(target, Target) else Target(target), module.tuning_database))
    return jobs


def _cached(job: Job) -> bool:
    return build.cached(job.request, job.target, prepacked=True, database=job.database)


def compile_all(jobs: Iterable[Job]) -> None:
    """Every job's kernel in the process cache (``build.get_kernel``), compiled on two cores where
    that pays (see the module docstring)."""
    unique = list(dict.fromkeys(jobs))
    todo = [job for job in unique if not _cached(job)]
    helper = None
    if len(todo) >= MIN_JOBS and len(os.sched_getaffinity(0)) > 1 and library_cache.exports() and \
            all(library_cache.is_host_cpu(job.target) for job in todo):
        helper = _Helper(todo)
    try:
        front = 0
        while front < len(todo) and (helper is None or front < helper.poll()):
            job = todo[front]
            build.get_kernel(job.request, job.target, prepacked=True, database=job.database)
            front += 1
        if helper is not None:
            helper.finish(front)
    finally:
        if helper is not None:
            helper.close()
    for job in unique:                                  # the helper's libraries: cache hits now
        build.get_kernel(job.request, job.target, prepacked=True, database=job.database)


class _Helper:
    """The helper process, and what it has announced: ``claim i`` before job ``i``, ``done i`` after."""

    def __init__(self, todo: List[Job]) -> None:
        env = dict(os.environ, TVM_CONV_CACHE_DIR=str(library_cache.cache_dir()))
        self.process = subprocess.Popen([sys.executable, "-m", "compiler.precompile"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env)
        self.process.stdin.write(pickle.dumps([(job.request, str(job.target), job.database) for job in todo]))
        self.process.stdin.close()
        self.jobs = len(todo)
        self.claimed = len(todo)           # the lowest job index it has claimed (none yet: len(todo))
        self.done = set()
        self.exited = False
        self.pending = b""

    def _read(self, block: bool) -> None:
        """Take the helper's announcements (unbuffered: select sees what is left to read)."""
        fd = self.process.stdout.fileno()
        while not self.exited and select.select([fd], [], [], None if block else 0)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                self.exited = True
            self.pending += chunk
            *lines, self.pending = self.pending.split(b"\n")
            for line in lines:
                word, _, index = line.decode(errors="replace").partition(" ")
                if word == "claim":
                    self.claimed = min(self.claimed, int(index))
                elif word == "done":
                    self.done.add(int(index))
            if block:
                break

    def poll(self) -> int:
        """The lowest job index claimed so far (the jobs from there on are the helper's)."""
        self._read(block=False)
        return self.claimed

    def finish(self, front: int) -> None:
        """Wait until the helper's claimed jobs at or after ``front`` are done (jobs before it are
        this process's; the helper's work on one of those, or a helper still starting when this
        process has done every job (cache hits), is not waited for)."""
        while not self.exited and front <= self.claimed < self.jobs and self.claimed not in self.done:
            self._read(block=True)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdout.close()


def _helper_main() -> None:
    """The helper: compile the jobs from the back into the kernel cache, announcing each."""
    jobs = pickle.loads(sys.stdin.buffer.read())
    for index in range(len(jobs) - 1, -1, -1):
        request, target, database = jobs[index]
        print(f"claim {index}", flush=True)
        build.compile_kernel(request, Target(target), prepacked=True, database=database)
        print(f"done {index}", flush=True)


if __name__ == "__main__":
    _helper_main()
