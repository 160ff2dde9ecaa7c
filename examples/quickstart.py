# %% [markdown]
# # Quickstart: torch.nn convolution layers, compiled by TVM
#
# What you will see:
# * `compiler.Conv2d` / `compiler.ConvTranspose2d` built with torch's own arguments,
# * weights moved in from `torch.nn` with `load_state_dict`,
# * the output checked against torch, and which schedule and target served each layer,
# * how long the first call (compilation) and a warm call took.

# %%
import time

import torch

import compiler

torch.manual_seed(0)
torch.set_num_threads(2)


def timed(fn, repeat=10):
    fn()                                            # warm
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e3


def report(name, ours, theirs, x, **kwargs):
    theirs.load_state_dict(ours.state_dict())
    with torch.no_grad():
        start = time.perf_counter()
        y = ours(x, **kwargs)                       # first call: compile, then run
        first_ms = (time.perf_counter() - start) * 1e3
        expected = theirs(x, **kwargs)
        err = (y - expected).abs().max().item()
        ours_ms = timed(lambda: ours(x, **kwargs))
        torch_ms = timed(lambda: theirs(x, **kwargs))
    k = ours.kernel
    print(f"{name}\n  output {tuple(y.shape)}  max |ours - torch| = {err:.2e}\n"
          f"  schedule {k.schedule!r} on {k.target}\n"
          f"  compile {k.compile_seconds * 1e3:.0f} ms (first call {first_ms:.0f} ms); "
          f"call {ours_ms:.3f} ms vs torch {torch_ms:.3f} ms")
    assert torch.allclose(y, expected, rtol=1e-4, atol=1e-4)
    return y


# %% A strided, padded, dilated convolution
conv = compiler.Conv2d(16, 33, (3, 5), stride=(2, 1), padding=(4, 2), dilation=(3, 1))
report(repr(conv), conv, torch.nn.Conv2d(16, 33, (3, 5), stride=(2, 1), padding=(4, 2), dilation=(3, 1)),
       torch.randn(20, 16, 50, 100))

# %% A dense 3x3 layer
dense = compiler.Conv2d(64, 64, 3, padding=1)
report(repr(dense), dense, torch.nn.Conv2d(64, 64, 3, padding=1), torch.randn(1, 64, 56, 56))

# %% Down and up again: ConvTranspose2d with output_size
x = torch.randn(1, 16, 12, 12)
down = compiler.Conv2d(16, 16, 3, stride=2, padding=1)
h = down(x)
up = compiler.ConvTranspose2d(16, 16, 3, stride=2, padding=1)
z = report(repr(up) + " with output_size", up, torch.nn.ConvTranspose2d(16, 16, 3, stride=2, padding=1), h,
           output_size=x.size())
assert z.shape == x.shape
print("all outputs match torch")
