# %% [markdown]
# # Ahead-of-time builds: an H100 kernel and a CPU kernel, shipped without the compiler
#
# What you will see:
# * a layer built for an H100 (`cuda/sm_90`) on this machine, which has no GPU: nvcc compiles the
#   device code and the library carries the sm_90 fatbin (tuning records are used when the
#   database for that target has one for this exact workload),
# * the same layer built for this CPU,
# * the CPU library loaded and run in a fresh Python process that imports only the TVM runtime and
#   torch (never this compiler), checked against torch.nn.Conv2d with the same weights.
#
# Run: `python examples/deploy.py [OUT_DIR]` (default `out/deploy`).

# %%
import json
import subprocess
import sys
from pathlib import Path

import compiler
from compiler import cuda_binary

LAYER, SHAPE = "Conv2d(64, 64, 3, padding=1)", (1, 64, 56, 56)
out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/deploy")

# %% Cross-compile for an H100 (sm_90)
gpu = compiler.export_library(LAYER, SHAPE, out / "sm_90", target="cuda/sm_90")
fatbins = cuda_binary.embedded_fatbins(str(out / "sm_90" / gpu["library"]))
print(f"H100 build: {out / 'sm_90' / gpu['library']}  schedule {gpu['schedule']['name']}  "
      f"device code {gpu['device_code']['format']} for {gpu['device_code']['arch']} "
      f"({len(fatbins[0])} bytes, carries sm_90 code: {b'sm_90' in fatbins[0]})")

# %% Build for this CPU
cpu = compiler.export_library(LAYER, SHAPE, out / "cpu", target="llvm")
print(f"CPU build:  {out / 'cpu' / cpu['library']}  schedule {cpu['schedule']['name']}  "
      f"target {cpu['target_key']}")

# %% Load and run the CPU build in a fresh process with only the runtime
RUNNER = r"""
import json, sys
import torch, tvm.runtime
out = sys.argv[1]
manifest = json.load(open(f"{out}/manifest.json"))
conv = tvm.runtime.load_module(f"{out}/{manifest['library']}")[manifest["entry"]]
reference = getattr(torch.nn, manifest["layer"]["class"])(**manifest["layer"]["args"])
x = torch.randn(manifest["args"][0]["shape"])
y = torch.empty(manifest["args"][-1]["shape"])
conv(x, reference.weight.detach(), reference.bias.detach(), y)        # any trained weights
err = (y - reference(x)).abs().max().item()
print(json.dumps({"max_abs_error": err, "compiler_imported": "compiler" in sys.modules}))
"""
proc = subprocess.run([sys.executable, "-c", RUNNER, str((out / "cpu").resolve())], capture_output=True, text=True,
                      check=True, cwd="/")
result = json.loads(proc.stdout.strip().splitlines()[-1])
print(f"fresh process: max |ours - torch| = {result['max_abs_error']:.2e}, "
      f"compiler imported: {result['compiler_imported']}")
assert result["max_abs_error"] < 1e-3 and not result["compiler_imported"]
