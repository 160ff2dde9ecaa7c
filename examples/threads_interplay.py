"""Our kernels alternating with torch ops in one process: TVM's thread pool against torch's OpenMP.

Run with the default environment (no OMP_* variables) to see what a user gets:

    python examples/threads_interplay.py [--rounds 15] [--seconds 0.1]

Each workload runs in three ways in the same process: all torch ("torch only"), our layers on TVM's
thread pool (what ``TVM_CONV_THREADS=tvm`` gives) and our layers on torch's OpenMP threads (the
default, see ``compiler/threads.py``); ``threads.attach`` switches the pool in place.  Short rounds
interleave the three and rotate their order, so background load on a shared machine hits all alike;
the table gives the median round's time per step and the fastest round's in brackets.
"""
import argparse
import os
import statistics
import time

import torch                                   # first, as in a user's program
from torch import nn

import compiler
from compiler import threads

MODES = ("torch only", "TVM pool", "OpenMP")


def conv_block(conv):
    """Our Conv2d(64, 64, 3) then a torch ReLU and a torch Conv2d(64, 64, 3)."""
    return nn.Sequential(conv(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1))


def depthwise_chain(conv, with_torch=True):
    """Depthwise 3x3 layers on 144 channels, 56x56 down to 14x14, each followed by a torch
    BatchNorm + ReLU6 (``with_torch``) or back to back."""
    layers = []
    for stride in (1, 2, 1, 2, 1):
        layers.append(conv(144, 144, 3, stride=stride, padding=1, groups=144, bias=False))
        if with_torch:
            layers += [nn.BatchNorm2d(144), nn.ReLU6()]
    return nn.Sequential(*layers)


def mobilenet_v2_prefix(conv):
    """MobileNetV2's first seven blocks at 224x224: depthwise layers ours, everything else torch."""
    def cbr(cin, cout, k=1, stride=1, groups=1, layer=nn.Conv2d, relu=True):
        mods = [layer(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
                nn.BatchNorm2d(cout)]
        return mods + [nn.ReLU6()] if relu else mods

    class Block(nn.Module):
        def __init__(self, cin, cout, expand, stride):
            super().__init__()
            hidden = cin * expand
            mods = cbr(cin, hidden) if expand != 1 else []
            mods += cbr(hidden, hidden, 3, stride, hidden, conv)
            mods += cbr(hidden, cout, relu=False)
            self.body = nn.Sequential(*mods)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    blocks = [nn.Sequential(*cbr(3, 32, 3, 2))]
    cin = 32
    for cout, expand, stride in [(16, 1, 1), (24, 6, 2), (24, 6, 1), (32, 6, 2), (32, 6, 1),
                                 (32, 6, 1), (64, 6, 2)]:
        blocks.append(Block(cin, cout, expand, stride))
        cin = cout
    return nn.Sequential(*blocks)


WORKLOADS = [
    ("conv3x3 -> relu -> torch conv3x3, 1x64x56x56", conv_block, (1, 64, 56, 56)),
    ("5 depthwise + torch BN+ReLU6, 1x144x56x56", depthwise_chain, (1, 144, 56, 56)),
    ("MobileNetV2 blocks 1-8, depthwise ours, 1x3x224x224", mobilenet_v2_prefix, (1, 3, 224, 224)),
    ("ours alone: conv3x3, 1x64x56x56", lambda conv: conv(64, 64, 3, padding=1), (1, 64, 56, 56)),
    ("ours alone: 5 depthwise, 1x144x56x56", lambda conv: depthwise_chain(conv, False), (1, 144, 56, 56)),
]


def use_pool(mode, models):
    """Point our kernels' parallel loops at TVM's pool or at torch's OpenMP threads."""
    pool = "tvm" if mode == "TVM pool" else "openmp"
    for model in models:
        for layer in model.modules():
            if isinstance(layer, compiler.Conv2d):
                assert threads.attach(layer.kernel.library, pool) == (pool == "openmp"), layer


def step_ms(fn, seconds):
    for _ in range(3):
        fn()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        steps += 1
    return (time.perf_counter() - start) / steps * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=0.1, help="per workload, mode and round")
    args = parser.parse_args()
    torch.manual_seed(0)
    omp = {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "TVM_"))}
    print(f"torch threads: {torch.get_num_threads()}, environment: {omp or 'no OMP_/TVM_ variables'}")

    ours, theirs, inputs = [], [], []
    for _, make, shape in WORKLOADS:
        model = make(compiler.Conv2d).eval()
        reference = make(nn.Conv2d).eval()
        reference.load_state_dict(model.state_dict())
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=1e-3, atol=1e-3)   # compiles
        ours.append(model)
        theirs.append(reference)
        inputs.append(x)

    if threads.launcher() is None or any(layer.kernel.library is None for model in ours
                                         for layer in model.modules() if isinstance(layer, compiler.Conv2d)):
        raise SystemExit("the OpenMP launcher is not available here (see the warning above)")

    times = {(w, m): [] for w in range(len(WORKLOADS)) for m in MODES}
    with torch.no_grad():
        for r in range(args.rounds):
            for w, (model, reference, x) in enumerate(zip(ours, theirs, inputs)):
                for mode in MODES[r % 3:] + MODES[:r % 3]:
                    if mode != "torch only":
                        use_pool(mode, [model])
                    net = reference if mode == "torch only" else model
                    time.sleep(0.05)            # every measurement starts on idle cores
                    times[w, mode].append(step_ms(lambda: net(x), args.seconds))

    name_width = max(len(name) for name, _, _ in WORKLOADS)
    print(f"\nms per step, median of {args.rounds} rounds (fastest)")
    print(f"{'workload':<{name_width}}  " + "  ".join(f"{m:>15}" for m in MODES) + "  TVM/OpenMP")
    for w, (name, _, _) in enumerate(WORKLOADS):
        cells = [f"{statistics.median(times[w, m]):7.2f} ({min(times[w, m]):5.2f})" for m in MODES]
        ratio = statistics.median(times[w, "TVM pool"]) / statistics.median(times[w, "OpenMP"])
        print(f"{name:<{name_width}}  " + "  ".join(f"{c:>15}" for c in cells) + f"  {ratio:9.2f}x")


if __name__ == "__main__":
    main()
