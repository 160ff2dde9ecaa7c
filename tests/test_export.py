"""Ahead-of-time builds: manifest, a CPU round trip in a fresh process that never imports the
compiler, CUDA libraries carrying device code for the requested arch, and clear load errors."""
import json
import subprocess
import sys

import pytest
import torch

import compiler
from compiler import cuda_binary, export
from compiler.__main__ import main
from targets import resolve

LOADER = r"""
import json, sys
import torch, tvm.runtime
assert "compiler" not in sys.modules and "schedules" not in sys.modules
out, cls, args, seed = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
manifest = json.load(open(f"{out}/manifest.json"))
fn = tvm.runtime.load_module(f"{out}/{manifest['library']}")[manifest["entry"]]
torch.manual_seed(seed)
layer = getattr(torch.nn, cls)(**args)
x = torch.randn(manifest["args"][0]["shape"])
tensors = {"input": x, "weight": layer.weight.detach(), "bias": layer.bias.detach() if layer.bias is not None else None}
y = torch.empty(manifest["args"][-1]["shape"])
fn(*[tensors[a["name"]].contiguous() for a in manifest["args"][:-1]], y)
with torch.no_grad():
    ref = layer.double()(x.double())
    for p in layer.parameters():
        p.abs_()
    magnitude = layer(x.double().abs())
# tests/reference.py's bound: K * u * conv(|x|, |w|) + u * |y|, float32 (u = 2**-24)
K = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1] + 1
excess = (y.double() - ref).abs() - (K * 2.0 ** -24 * magnitude + 2.0 ** -24 * ref.abs())
print(json.dumps({"excess": float(excess.max()),
                  "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("compiler", "schedules", "targets"))}))
"""

LAYERS = [
    ("Conv2d", "Conv2d(8, 16, 3, padding=1)", (1, 8, 12, 12)),
    ("Conv2d", "Conv2d(6, 12, (3, 5), stride=2, padding=(2, 1), dilation=(1, 2), groups=3, bias=False)",
     (2, 6, 13, 11)),
    ("Conv2d", "Conv2d(4, 4, 3, padding=1, padding_mode='reflect')", (1, 4, 9, 9)),
    ("ConvTranspose2d", "ConvTranspose2d(8, 6, 4, stride=2, padding=1, groups=2)", (1, 8, 7, 7)),
]


@pytest.mark.parametrize("cls,text,shape", LAYERS, ids=[t for _, t, _ in LAYERS])
def test_cpu_round_trip_in_a_fresh_process_with_only_the_runtime(tmp_path, cls, text, shape):
    manifest = compiler.export_library(text, shape, tmp_path, target="llvm", database=False)
    assert manifest["layer"]["class"] == cls
    args = manifest["layer"]["args"]
    assert list(args) == list(__import__("inspect").signature(getattr(torch.nn, cls)).parameters)[:len(args)]
    proc = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path), cls, json.dumps(args), "7"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["modules"] == []
    assert result["excess"] <= 0, result          # within the float32 error bound everywhere


def test_manifest_describes_the_call(tmp_path):
    m = export.export_library("Conv2d(8, 16, 3, stride=2, bias=False)", (8, 10, 10), tmp_path,
                              database=False)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == m
    assert m["library"] == "conv.so" and (tmp_path / "conv.so").exists() and m["entry"] == "conv"
    assert [a["name"] for a in m["args"]] == ["input", "weight", "output"]
    assert m["args"][0]["shape"] == [1, 8, 10, 10] and m["args"][-1]["shape"] == [1, 16, 4, 4]
    assert m["layer"] == {"class": "Conv2d", "args": {
        "in_channels": 8, "out_channels": 16, "kernel_size": [3, 3], "stride": [2, 2], "padding": [0, 0],
        "dilation": [1, 1], "groups": 1, "bias": False, "padding_mode": "zeros"}}
    assert m["schedule"]["kind"] == "hand-written" and m["schedule"]["workload_hash"].isdigit()
    assert m["target"]["kind"] == "llvm" and m["target_key"].startswith("llvm-")
    assert {"compiler", "apache-tvm", "apache-tvm-ffi"} <= set(m["versions"])


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_build_embeds_device_code_for_the_arch(tmp_path, arch, capsys):
    main(["build", "--layer", "Conv2d(16, 32, 3, padding=1, groups=2)", "--input-shape", "1,16,20,20",
          "--target", f"cuda/{arch}", "--out", str(tmp_path), "--no-tuned"])
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["target"]["arch"] == arch and m["device_code"]["format"] == "fatbin"
    images = cuda_binary.embedded_fatbins(str(tmp_path / m["library"]))
    assert len(images) == 1 and len(images[0]) == m["device_code"]["bytes"]
    other = "sm_80" if arch == "sm_90" else "sm_90"
    assert arch.encode() in images[0] and other.encode() not in images[0]
    assert b"__global__" not in (tmp_path / m["library"]).read_bytes()      # no CUDA source left
    with pytest.raises(RuntimeError, match=f"built for CUDA {arch}"):
        export.load(tmp_path)


def test_a_library_for_another_isa_is_refused_clearly(tmp_path):
    manifest = export.export_library("Conv2d(4, 4, 3)", (1, 4, 8, 8), tmp_path, database=False)
    manifest["target"]["mtriple"] = "aarch64-linux-gnu"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeError, match="built for aarch64-linux-gnu"):
        export.load(tmp_path)


def test_cross_isa_build_needs_its_toolchain_or_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1", "num-cores": 4}
    import shutil
    if shutil.which("aarch64-linux-gnu-g++") or shutil.which("aarch64-linux-gnu-gcc"):
        m = export.export_library("Conv2d(4, 4, 3)", (1, 4, 8, 8), tmp_path, target=target, database=False)
        assert m["target_key"] == "llvm-aarch64-linux-gnu-neoverse-n1"
        assert b"\xb7\x00" in (tmp_path / "conv.so").read_bytes()[18:20]       # ELF e_machine: AArch64
    else:
        with pytest.raises(RuntimeError, match="cross toolchain"):
            export.export_library("Conv2d(4, 4, 3)", (1, 4, 8, 8), tmp_path, target=target, database=False)


def test_export_raises_torch_shape_errors_before_building(tmp_path):
    with pytest.raises(RuntimeError):
        export.export_library("Conv2d(4, 4, 5)", (1, 4, 3, 3), tmp_path)
    assert not (tmp_path / "manifest.json").exists()


def test_local_cpu_build_loads_and_runs(tmp_path):
    export.export_library("Conv2d(4, 8, 3, padding=1)", (1, 4, 8, 8), tmp_path, database=False)
    fn, manifest = export.load(tmp_path)
    layer = torch.nn.Conv2d(4, 8, 3, padding=1)
    x, y = torch.randn(1, 4, 8, 8), torch.empty(1, 8, 8, 8)
    fn(x, layer.weight.detach(), layer.bias.detach(), y)
    torch.testing.assert_close(y, layer(x).detach(), rtol=1e-5, atol=1e-5)
    assert resolve(manifest["target"]).kind.name == "llvm"
