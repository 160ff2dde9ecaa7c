"""``export_model``: one library for a model's conv kernels, loaded with TVM's runtime alone."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from compiler import cuda_binary
from compiler.model_export import export_model, load_model


class Net(nn.Module):
    """A residual block (fused add), a conv used twice, a transposed layer, an unused conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.tail = nn.Conv2d(8, 8, 1)
        self.twice = nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
        self.unused = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = F.relu(self.bn(self.stem(x)))
        y = F.relu(self.tail(self.body(y)) + y)
        return self.up(self.twice(self.twice(y)))


def _model():
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model


def test_export_runs_in_a_runtime_only_process(tmp_path):
    model, x = _model(), torch.randn(2, 3, 12, 12)
    out = tmp_path / "export"
    manifest = export_model(model, x, out)
    assert {p.name for p in out.iterdir()} == {"model.so", "manifest.json", "model.pt", "tvmconv_runtime.py",
                                               "tvmconv_omp_launch.so", "tvmconv_omp.py"}
    assert manifest["launcher"] == "tvmconv_omp_launch.so"
    assert json.loads((out / "manifest.json").read_text()) == manifest
    # four kernels: stem+bn+relu, body (which `twice`'s two calls share: the same workload),
    # tail+add+relu, up; `unused` gets none
    assert [e["entry"] for e in manifest["entries"]] == ["conv0", "conv1", "conv2", "conv3"]
    assert [e["request"]["epilogue"] for e in manifest["entries"]] == [["relu"], [], ["add", "relu"], []]
    assert manifest["layers"]["twice"] == [{"input_shape": [2, 8, 12, 12], "entry": "conv1"}]
    assert "unused" not in manifest["layers"]
    assert [a["name"] for a in manifest["entries"][2]["args"]] == ["input", "weight", "bias", "residual", "output"]
    with torch.no_grad():
        expected = model(x)
    torch.save((x, expected), tmp_path / "io.pt")
    script = f"""
import sys
sys.path.insert(0, {str(out)!r})
import torch, tvmconv_runtime
model = tvmconv_runtime.load({str(out)!r})
x, expected = torch.load({str(tmp_path / 'io.pt')!r})
import tvmconv_omp                      # the kernels' parallel loops run on torch's OpenMP threads
launcher = tvmconv_runtime._LAUNCHERS[{str(out / 'tvmconv_omp_launch.so')!r}]
assert tvmconv_omp.hook({str(out / 'model.so')!r}) == launcher.launch
launches = launcher.launches()
with torch.no_grad():
    y = model(x)
assert launcher.launches() > launches
err = (y - expected).abs().max().item() / expected.abs().max().item()
assert err < 1e-5, err
assert not [m for m in sys.modules if m == 'compiler' or m.startswith('compiler.')], 'the compiler was imported'
maps = open('/proc/self/maps').read()
assert 'libtvm_runtime' in maps and 'libtvm_compiler' not in maps, 'not the runtime alone'
print('ok', err)
"""
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stdout + done.stderr


def test_load_model_in_process_and_shapes_it_was_not_built_for(tmp_path):
    model, x = _model(), torch.randn(1, 3, 10, 10)
    export_model(model, x, tmp_path, fuse=False)
    loaded = load_model(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)
        with pytest.raises(RuntimeError, match=r"exported for input shapes \[\(1, 3, 10, 10\)\]"):
            loaded(torch.randn(1, 3, 11, 11))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_cuda_export_carries_the_arch(tmp_path):
    manifest = export_model(_model(), torch.randn(1, 3, 8, 8), tmp_path, target="cuda/sm_90")
    assert manifest["device_code"]["arch"] == "sm_90" and manifest["target_key"] == "cuda-sm_90"
    fatbins = cuda_binary.embedded_fatbins(str(tmp_path / "model.so"))
    assert fatbins and all(b"sm_90" in f for f in fatbins)


def test_exported_kernels_use_torchs_threads_or_warn_and_keep_tvms_pool(tmp_path, monkeypatch):
    """In process (compiler.load_model, the same loader): the library's parallel loops on torch's
    OpenMP threads; when the launcher cannot start, one warning, TVM's pool, the same numbers."""
    from compiler import model_export, omp_hooks
    model, x = _model(), torch.randn(1, 3, 10, 10)
    export_model(model, x, tmp_path)
    loader = model_export._loader_module()
    loaded = load_model(tmp_path)
    hooks = loader._omp_hooks()
    launcher = loader._LAUNCHERS[str(tmp_path / "tvmconv_omp_launch.so")]
    assert hooks.hook(tmp_path / "model.so") == launcher.launch
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(loader, "_LAUNCHERS", {})
    monkeypatch.setattr(hooks, "torch_openmp", lambda: (_ for _ in ()).throw(RuntimeError("no omp")))
    with pytest.warns(RuntimeWarning, match="TVM's thread pool"):
        loaded = load_model(tmp_path)
    assert hooks.hook(tmp_path / "model.so") == omp_hooks.tvm_pool()[0]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)
