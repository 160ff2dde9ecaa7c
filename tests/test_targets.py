"""The host CPU target: a real mcpu (never 'native'/'generic' silently), core count, vector width."""
import os

from tvm.target import codegen

from targets import cpu_info, host_target


def test_host_target_names_the_detected_cpu():
    t = host_target()
    assert str(t.kind) == "llvm"
    assert str(t.attrs["mcpu"]) == codegen.llvm_get_system_cpu()
    assert str(t.attrs["mcpu"]) not in ("native", "")
    assert int(t.attrs["num-cores"]) == len(os.sched_getaffinity(0))


def test_cpu_info():
    info = cpu_info(host_target())
    assert info.vector_bits in (128, 256, 512)
    assert info.vector_registers in (16, 32)
    assert info.key == f"llvm-{info.mcpu}"


def test_tvm_uses_every_core():
    import compiler  # noqa: F401  (sets TVM_NUM_THREADS before the pool starts)
    import tvm
    assert tvm.runtime.num_threads() == len(os.sched_getaffinity(0))
