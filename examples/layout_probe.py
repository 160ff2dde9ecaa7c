"""On a GPU: should an NCHW input go through the NHWC tensor-core kernel (a layout change in and out)?

For each layer of a layers file, at one dtype and batch, module call vs module call with CUDA events
(``compiler.bench``'s rounds): our NCHW kernel on an NCHW input; the same module on that input
converted to channels_last and back (``m(x.contiguous(memory_format=channels_last)).contiguous()``:
the two copies plus our NHWC kernel); our NHWC kernel alone on channels_last tensors; cuDNN NCHW and
channels_last.  What it prints decides ``ops.kernel_layout``'s choice for NCHW inputs.

    python examples/layout_probe.py --layers-file examples/cuda_layers.txt --dtype float16 --batch 32
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch

    from compiler.__main__ import read_layers_file
    from compiler.bench import _round_time
    from compiler.layers import parse_layer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers-file", default="examples/cuda_layers.txt")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda", help="cuda (cpu only checks the script: NCHW kernels there)")
    args = parser.parse_args()
    device = args.device
    kind = getattr(torch, args.dtype)
    cl = torch.channels_last
    print(f"{'layer':52s} {'NCHW':>8s} {'via NHWC':>9s} {'NHWC':>8s} {'cuDNN':>8s} {'cuDNN CL':>8s}  (ms; kernel layouts)")
    for text, shape in read_layers_file(args.layers_file):
        shape = (args.batch, *shape[1:])
        ours = parse_layer(text).to(device, kind)
        ours.tuning_database = False
        theirs = parse_layer(text, torch.nn).to(device, kind)
        theirs.load_state_dict(ours.state_dict())
        ours_cl, theirs_cl = parse_layer(text).to(device, kind), parse_layer(text, torch.nn).to(device, kind)
        for m, src in ((ours_cl, ours), (theirs_cl, ours)):
            m.load_state_dict(src.state_dict())
        ours_cl.tuning_database = False
        ours_cl, theirs_cl = ours_cl.to(memory_format=cl), theirs_cl.to(memory_format=cl)
        x = torch.randn(*shape, device=device, dtype=kind)
        xl = x.contiguous(memory_format=cl)
        calls = {"NCHW": lambda: ours(x), "via NHWC": lambda: ours(x.contiguous(memory_format=cl)).contiguous(),
                 "NHWC": lambda: ours_cl(xl), "cuDNN": lambda: theirs(x), "cuDNN CL": lambda: theirs_cl(xl)}
        with torch.no_grad():
            layouts = []
            for name in ("NCHW", "via NHWC", "NHWC"):
                calls[name]()
                layouts.append((ours_cl if name == "NHWC" else ours).last_request.layout)
            times = {name: statistics.median(_round_time(f, 0.02, device) for _ in range(args.rounds)) * 1e3
                     for name, f in calls.items()}
        print(f"{text[:52]:52s} " + " ".join(f"{times[n]:8.4f}" for n in calls) + f"  {'/'.join(layouts)}",
              flush=True)


if __name__ == "__main__":
    main()
