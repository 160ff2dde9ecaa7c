"""Single-thread backward timing: our weight-grad and input-grad kernels (compiler.gradients) vs torch's
torch.ops.aten.convolution_backward on ResNet-50 / MobileNetV3 layers.  Run pinned to one core:
``taskset -c 1 python examples/backward_bench.py 1,8 [name filter]`` (batches, comma-separated)."""
import sys, time, torch
torch.set_num_threads(1)
from compiler.spec import ConvSpec
from compiler import gradients as G
LAYERS = [
 ("r50 3x3 64 56", ConvSpec.conv2d(64, 64, 3, padding=1), 56),
 ("r50 1x1 256>64 56", ConvSpec.conv2d(256, 64, 1), 56),
 ("r50 3x3 128 28", ConvSpec.conv2d(128, 128, 3, padding=1), 28),
 ("r50 3x3 s2 128 56>28", ConvSpec.conv2d(128, 128, 3, stride=2, padding=1), 56),
 ("r50 3x3 256 14", ConvSpec.conv2d(256, 256, 3, padding=1), 14),
 ("r50 1x1 1024>256 14", ConvSpec.conv2d(1024, 256, 1), 14),
 ("r50 3x3 512 7", ConvSpec.conv2d(512, 512, 3, padding=1), 7),
 ("mnv3 dw3x3 s2 64 112", ConvSpec.conv2d(64, 64, 3, stride=2, padding=1, groups=64), 112),
 ("mnv3 dw5x5 240 14", ConvSpec.conv2d(240, 240, 5, padding=2, groups=240), 14),
 ("mnv3 1x1 40>120 28", ConvSpec.conv2d(40, 120, 1), 28),
]
def best(f, reps):
    f(); ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts) * 1e3
batches = [int(b) for b in sys.argv[1].split(",")] if len(sys.argv) > 1 else [1, 8]
only = sys.argv[2] if len(sys.argv) > 2 else ""
print(f"{'layer':24s} N  torch_dW  ours_dW  torch_dX  ours_dX   (ms, best of reps; ratio torch/ours)")
for name, spec, hw in LAYERS:
    if only not in name: continue
    for n in batches:
        x = torch.randn(n, spec.in_channels, hw, hw); w = torch.randn(spec.weight_shape)
        gy = torch.randn(spec.output_shape(x.shape))
        args = (gy, x, w, None, spec.stride, spec.padding, spec.dilation, False, [0, 0], spec.groups)
        reps = 5 if n > 1 else 10
        tw = best(lambda: torch.ops.aten.convolution_backward(*args, [False, True, False]), reps)
        tx = best(lambda: torch.ops.aten.convolution_backward(*args, [True, False, False]), reps)
        ow = best(lambda: G.conv_weight_grad(spec, x, gy, tuning_database=False), reps)
        ox = best(lambda: G.conv_input_grad(spec, x.shape, w, gy, tuning_database=False), reps)
        print(f"{name:24s} {n}  {tw:8.2f} {ow:8.2f}  {tx:8.2f} {ox:8.2f}   dW {tw/ow:.2f}x  dX {tx/ox:.2f}x  step {(tw+tx)/(ow+ox):.2f}x", flush=True)
