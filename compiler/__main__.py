"""Command line.

``python -m compiler bench [--csv F] [--json F] [--layer L --input-shape N,C,H,W | --layers-file F]``
``python -m compiler tune (--layer L --input-shape N,C,H,W | --layers-file F | --suite) [--target T]
                          [--trials N] [--work-dir DIR] [--rpc-tracker HOST:PORT --rpc-key KEY]
                          [--strategy S] [--cost-model M] [--population P] [--seed S]
                          [--space ours|generic|both] [--plot]``
``python -m compiler build --layer L --input-shape N,C,H,W [--target T] --out DIR``
``python -m compiler space --layer L --input-shape N,C,H,W [--target T] [--space ours|generic|both]``
``python -m compiler report DB [--target T] [--carry-over]``

Every argument is checked before anything is compiled, tuned or timed (:func:`prepare`): the layer
text (:func:`compiler.layers.parse_layer`), the input shape (4 values N,C,H,W, or 3 values C,H,W for
one unbatched input, built as N=1; every value >= 1, since a kernel is built for that exact shape),
the layer against the shape (``ConvSpec.output_shape``: torch's errors), the target
(``targets.resolve`` and TVM, then ``schedules.rules_for``), the dtype, the counts, and the files and
folders to write.  Bad input is answered with one line on stderr, ``error: <what is wrong>``, and exit
status 2 (argparse's own refusals included); ``--debug`` or ``TVM_CONV_DEBUG=1`` prints the traceback
instead.  A failure during the work itself prints ``error: <type>: <message>`` with a hint, exit 1.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .search import COST_MODELS, SPACES, STRATEGIES

DEBUG_ENV = "TVM_CONV_DEBUG"
USAGE_STATUS = 2            # argparse's convention for bad command lines
FAILURE_STATUS = 1
SHAPE_HELP = "N,C,H,W (or C,H,W for one unbatched input); every value >= 1"


class UsageError(Exception):
    """Bad command-line input: reported as one line ``error: <message>``, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse's own refusals (missing or unknown options, a non-integer count) as UsageError, so
    that they too are one line rather than usage text."""

    def error(self, message):
        raise UsageError(message)


# --------------------------------------------------------------------------------------- checks
def _values(shape) -> str:
    return ",".join(map(str, shape))


def _split_shape(text: str) -> List[str]:
    return text.strip().strip("()[]").replace("x", ",").split(",")


def parse_shape(text, what: str = "--input-shape") -> Tuple[int, int, int, int]:
    """``N,C,H,W`` (also ``NxCxHxW``, or a sequence) as a batched shape; three values ``C,H,W`` are
    one unbatched input (N=1, as the modules accept).  Every value must be >= 1: N=0 is an empty
    batch torch accepts, but a kernel is built for one exact shape."""
    from .layers import batched_shape

    if isinstance(text, str):
        try:
            values = [int(v) for v in _split_shape(text)]
        except ValueError:
            raise UsageError(f"{what} {text!r}: expected integers N,C,H,W (or C,H,W for one unbatched "
                             "input), e.g. 1,64,56,56") from None
    else:
        values = [int(v) for v in text]
    try:
        shape = batched_shape(values)
    except ValueError as e:
        raise UsageError(f"{what} {_values(values)}: expected 4 values N,C,H,W or 3 values C,H,W, "
                         f"got {len(values)}") from e
    for name, value in zip("NCHW", shape):
        if value < 1:
            why = " (a kernel is built for this exact batch size)" if name == "N" else ""
            raise UsageError(f"{what} {_values(values)}: {name} must be >= 1, got {value}{why}")
    return shape


def check_layer(text: str, shape, where: Optional[str] = None) -> Tuple[str, Tuple[int, int, int, int]]:
    """``(layer text, batched shape)`` once the layer parses, builds and fits the shape.

    ``where``: ``FILE:LINE`` for a layers file (None: the command line's --layer / --input-shape).
    """
    from .layers import parse_call, spec_of

    prefix = f"{where}: " if where else "--layer: "
    try:
        _, _, kwargs = parse_call(text)
        refused = [k for k in ("device", "dtype") if k in kwargs]
        if refused:
            raise UsageError(f"{refused[0]}= is not taken in the layer text (the command's own options "
                             "choose the dtype and the device)")
        spec = spec_of(text)                        # the constructor's own (torch's) errors
    except (UsageError, ValueError, TypeError, RuntimeError) as e:
        raise UsageError(prefix + str(e)) from e
    given = shape
    shape = parse_shape(given, f"{where}: input shape" if where else "--input-shape")
    try:
        spec.output_shape(shape)                    # torch's shape errors (channels, kernel size, ...)
    except (ValueError, RuntimeError) as e:
        what = f"{where}: layer does not fit input shape" if where else "--layer does not fit --input-shape"
        values = given.strip() if isinstance(given, str) else _values(given)
        if len(_split_shape(given) if isinstance(given, str) else given) == 3:
            values += f" (one unbatched input, built as {_values(shape)})"
        raise UsageError(f"{what} {values}: {e}") from e
    return text.strip(), shape


def read_layers_file(path: str) -> List[Tuple[str, Tuple[int, int, int, int]]]:
    """One ``LAYER ; N,C,H,W`` per line (``#`` starts a comment), e.g.
    ``Conv2d(64, 64, 3, padding=1) ; 1,64,56,56``; every line checked as :func:`check_layer` does,
    a bad one reported as ``FILE:LINE: ...``."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise UsageError(f"--layers-file {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--layers-file {path}: is a folder, not a file") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"--layers-file {path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise UsageError(f"--layers-file {path}: {e.strerror or e}") from e
    layers = []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        layer, sep, shape = line.rpartition(";")
        if not sep:
            raise UsageError(f"{path}:{number}: expected 'LAYER ; N,C,H,W', got {line!r}")
        layers.append(check_layer(layer, shape.strip(), f"{path}:{number}"))
    if not layers:
        raise UsageError(f"--layers-file {path}: no layers in it (one 'LAYER ; N,C,H,W' per line)")
    return layers


def check_target(text: str):
    """The TVM target for a name (``llvm``, ``cuda``, ``cuda/sm_XX``) or a JSON dict, once
    ``targets.resolve`` and TVM accept it and the project has schedules for its kind."""
    from schedules import rules_for
    from targets import resolve

    value = text.strip()
    if value.startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise UsageError(f"--target: malformed JSON target at line {e.lineno} column {e.colno} "
                             f"(char {e.pos}): {e.msg}") from e
    try:
        target = resolve(value)
    except (ValueError, TypeError, RuntimeError) as e:
        if isinstance(value, dict):
            raise UsageError(f"--target: TVM refuses the JSON target: {e}") from e
        raise UsageError(f"--target: {e}") from e
    try:
        rules_for(target)
    except ValueError as e:
        raise UsageError(f"--target {text}: {e}") from e
    return target


def check_dtype(name: str) -> str:
    from .modules import SUPPORTED_DTYPES

    names = list(SUPPORTED_DTYPES.values())
    if name not in names:
        raise UsageError(f"--dtype {name!r}: expected one of {', '.join(names)}")
    return name


def _at_least(flag: str, value, minimum: int) -> None:
    if value is not None and value < minimum:
        raise UsageError(f"{flag} must be >= {minimum}, got {value}")


def _check_can_write_in(folder: Path, flag: str, path: str) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: folder {folder} is not writable")
    try:                                    # os.access says yes to root even where nobody may write
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tvm-conv-write-check-"):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot create files in {folder} ({e.strerror or e})") from e


def check_out_dir(path: str, flag: str = "--out") -> Path:
    """A folder that exists and is writable, or that can be created (nothing is created here)."""
    if not path:
        raise UsageError(f"{flag}: empty path")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {path}: exists and is not a folder")
    if out.is_symlink() and not out.exists():
        raise UsageError(f"{flag} {path}: a symbolic link to nothing")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is not a folder")
    _check_can_write_in(existing, flag, path)
    return out


def check_out_file(path: str, flag: str) -> Path:
    """A file that can be written: not a folder, in an existing writable folder."""
    if not path:
        raise UsageError(f"{flag}: empty path")
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"{flag} {path}: is a folder")
    folder = out.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: folder {folder} does not exist")
    if out.exists():
        if not os.access(out, os.W_OK):
            raise UsageError(f"{flag} {path}: not writable")
    else:
        _check_can_write_in(folder, flag, path)
    return out


def _selected_layers(args, default_suite: bool) -> List[Tuple[str, tuple]]:
    """The (layer, shape) pairs of --layer/--input-shape, --layers-file or --suite, checked."""
    given = [name for name, on in (
        ("--layer/--input-shape", args.layer is not None or args.input_shape is not None),
        ("--layers-file", args.layers_file is not None),
        ("--suite", getattr(args, "suite", False))) if on]
    if len(given) > 1:
        raise UsageError(f"give one of --layer with --input-shape, --layers-file"
                         f"{' or --suite' if hasattr(args, 'suite') else ''}, not {' and '.join(given)}")
    if not given and not default_suite:
        raise UsageError("give --layer with --input-shape, --layers-file or --suite")
    if not given or getattr(args, "suite", False):
        from .bench import DEFAULT_SUITE
        return [check_layer(text, shape, "the default suite") for text, shape in DEFAULT_SUITE]
    if args.layers_file is not None:
        return read_layers_file(args.layers_file)
    if args.layer is None:
        raise UsageError("--input-shape needs --layer (e.g. --layer 'Conv2d(64, 64, 3, padding=1)')")
    if args.input_shape is None:
        raise UsageError("--layer needs --input-shape N,C,H,W (or C,H,W for one unbatched input)")
    return [check_layer(args.layer, args.input_shape)]


def _check_measuring(args, target) -> None:
    """Where ``tune`` measures: the tracker's HOST:PORT and key, or a local device of the target."""
    if args.rpc_tracker is not None or args.rpc_key is not None:
        if not args.rpc_tracker or not args.rpc_key:
            raise UsageError("--rpc-tracker and --rpc-key go together: the tracker's HOST:PORT and the "
                             "key the devices registered with")
        host, _, port = args.rpc_tracker.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--rpc-tracker must be HOST:PORT (port 1-65535), got {args.rpc_tracker!r}")
        return
    if str(target.kind.name) == "cuda":
        from targets import local_arch
        arch, local = str(target.attrs.get("arch", "")), local_arch()
        if local != arch:
            raise UsageError(f"--target {args.target}: measuring on cuda {arch} needs a local GPU of that "
                             f"arch (this machine has {local or 'no GPU'}): tune on one, or through "
                             "--rpc-tracker/--rpc-key")


@dataclass
class Prepared:
    """What a command runs on, checked."""
    command: str
    layers: List[Tuple[str, Tuple[int, int, int, int]]]
    target: object = None
    dtype: str = "float32"
    models: List[str] = field(default_factory=list)     # bench --models: networks of compiler.zoo


def _check_models(args, flag: str, names: List[str]) -> List[str]:
    """Networks of compiler.zoo (``bench --models``, ``tune/build --model``), never with single layers."""
    from .zoo import MODELS
    if args.layer is not None or args.input_shape is not None or getattr(args, "layers_file", None) is not None \
            or getattr(args, "suite", False):
        raise UsageError(f"{flag} works on whole networks: not with --layer, --input-shape, --layers-file or "
                         "--suite")
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        raise UsageError(f"{flag}: unknown network {unknown[0]!r}: choose from {', '.join(MODELS)}")
    return list(names) or list(MODELS)


def _report_target(args):
    """``report``: the database folder must exist; its target is --target's, or its name's."""
    if not Path(args.database).is_dir():
        raise UsageError(f"report {args.database}: no such folder (a database folder, e.g. tuning_logs/llvm-znver4)")
    if args.target is not None:
        return check_target(args.target)
    from .report import target_of
    try:
        return target_of(args.database)
    except ValueError as e:
        raise UsageError(str(e)) from e


def prepare(args) -> Prepared:
    """Check every argument of the parsed command line; raises UsageError naming the first bad one.
    Nothing is compiled, tuned or written here."""
    if args.command == "bench":
        _at_least("--threads", args.threads, 1)
        for flag in ("csv", "json"):
            if getattr(args, flag) is not None:
                check_out_file(getattr(args, flag), f"--{flag}")
        if args.device == "cuda":
            import torch
            if not torch.cuda.is_available():
                raise UsageError("--device cuda: no CUDA GPU is usable here (torch.cuda.is_available() "
                                 "is False)")
        _at_least("--batch", args.batch, 1)
        if args.tf32 and (args.device != "cuda" or args.dtype != "float32"):
            raise UsageError("--tf32 is about cuDNN's float32 convolutions: it needs --device cuda and "
                             "--dtype float32")
        if args.models is not None:
            if args.device != "cpu":
                raise UsageError("--models runs on the CPU (--device cpu)")
            if args.dtype != "float32" or args.batch is not None or args.channels_last:
                raise UsageError("--models measures each network at its own input in float32 (no --dtype, "
                                 "--batch or --channels-last)")
            return Prepared("bench", [], models=_check_models(args, "--models", args.models))
        return Prepared("bench", _selected_layers(args, default_suite=True))
    if args.command == "report":
        return Prepared("report", [], _report_target(args))
    target = check_target(args.target)
    dtype = check_dtype(args.dtype)
    if args.command == "tune":
        _at_least("--trials", args.trials, 0)
        if args.seed is not None and not 0 <= args.seed < 2 ** 31:
            raise UsageError(f"--seed must be in [0, 2**31), got {args.seed}")
        _at_least("--trials-per-iter", args.trials_per_iter, 1)
        _at_least("--population", args.population, 1)
        _at_least("--final-check", args.final_check, 0)
        if args.plot:
            from .curves import PlotUnavailable, require_matplotlib
            try:
                require_matplotlib()
            except PlotUnavailable as e:
                raise UsageError(str(e)) from e
        if args.work_dir is not None:
            check_out_dir(args.work_dir, "--work-dir")
        _check_measuring(args, target)
        if args.model is not None:
            return Prepared("tune", [], target, dtype, models=_check_models(args, "--model", [args.model]))
        return Prepared("tune", _selected_layers(args, default_suite=False), target, dtype)
    if args.command == "space":
        if args.layer is None or args.input_shape is None:
            raise UsageError("give --layer with --input-shape")
        return Prepared("space", [check_layer(args.layer, args.input_shape)], target, dtype)
    # build
    if args.model is not None:
        models, layers = _check_models(args, "--model", [args.model]), []
    else:
        models = []
        if args.layer is None or args.input_shape is None:
            raise UsageError("give --layer with --input-shape, or --model NAME")
        layers = [check_layer(args.layer, args.input_shape)]
    if args.database is not None and not args.no_tuned and not Path(args.database).is_dir():
        raise UsageError(f"--database {args.database}: no such folder")
    check_out_dir(args.out)
    if str(target.kind.name) == "llvm":
        from .export import _cross_compiler
        try:
            _cross_compiler(target)           # a foreign ISA's toolchain must be there
        except RuntimeError as e:
            raise UsageError(f"--target {args.target}: {e}") from e
    return Prepared("build", layers, target, dtype, models=models)


# --------------------------------------------------------------------------------------- work
def torch_input(name: str):
    """A random example input of a zoo network's benchmark shape."""
    import torch

    from .zoo import MODELS
    return torch.randn(MODELS[name][1])


def _describe(job: Prepared) -> None:
    """What ``--dry-run`` prints: the command and each checked layer and shape."""
    from targets import target_key
    where = f" for {target_key(job.target)} ({job.dtype})" if job.target is not None else ""
    if job.models:
        print(f"{job.command}: networks {', '.join(job.models)}, arguments checked, nothing run")
        return
    print(f"{job.command}: {len(job.layers)} layer(s){where}, arguments checked, nothing run")
    for layer, shape in job.layers:
        print(f"  {layer} ; {','.join(map(str, shape))}")


def _run(job: Prepared, args) -> None:
    if job.command == "bench" and job.models:
        from .bench_models import run_models
        run_models(job.models, threads=args.threads, csv_path=args.csv, json_path=args.json)
    elif job.command == "bench" and args.backward:
        from . import bench_backward
        from .bench import Setting
        bench_backward.run(job.layers, threads=args.threads, device=args.device,
                           setting=Setting(args.dtype, args.batch, args.channels_last, args.tf32))
    elif job.command == "bench":
        from . import bench as bench_mod
        bench_mod.run(job.layers, threads=args.threads, csv_path=args.csv, json_path=args.json,
                      tuned=not args.no_tuned, device=args.device,
                      setting=bench_mod.Setting(args.dtype, args.batch, args.channels_last, args.tf32))
    elif job.command == "tune" and job.models:
        from . import zoo
        from .model_tuning import tune_model
        (name,) = job.models
        tune_model(zoo.make(name), torch_input(name), target=job.target, trials=args.trials,
                   work_dir=args.work_dir, fuse=not args.no_fuse, trials_per_iter=args.trials_per_iter,
                   rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key, seed=args.seed, verbose=args.verbose,
                   final_check=args.final_check, population=args.population, strategy=args.strategy,
                   cost_model=args.cost_model, space=args.space, plot=args.plot)
    elif job.command == "build" and job.models:
        from . import zoo
        from .model_export import export_model
        (name,) = job.models
        manifest = export_model(zoo.make(name), torch_input(name), args.out, target=job.target,
                                fuse=not args.no_fuse, database=False if args.no_tuned else args.database)
        print(f"{name}: {len(manifest['entries'])} kernels in {Path(args.out) / manifest['library']}, "
              f"{len(manifest['layers'])} layers, built in {manifest['build_seconds']:.1f} s")
    elif job.command == "tune":
        from . import tuning

        def report(r):
            within = r.within()
            print(f"[tune] done {r.layer} {'x'.join(map(str, r.input_shape))}: hand {r.hand_ms:.3f} ms, "  # noqa
                  f"best {r.best_ms:.3f} ms ({r.hand_ms / r.best_ms:.2f}x), {r.trials_run} trials in "
                  f"{r.wall_s:.0f} s" + (f", within 10% of this run's best after {within[0]} trials / "
                                         f"{within[1]:.0f} s" if within else "") + f" -> {r.run_dir}")
            print(f"[tune] curve {r.curve_path}" + (f", plot {r.plot_path}" if r.plot_path else ""))
        tuning.tune_many(job.layers, report=report, target=job.target, trials=args.trials,
                         work_dir=args.work_dir, dtype=job.dtype, trials_per_iter=args.trials_per_iter,
                         rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key, seed=args.seed,
                         verbose=args.verbose, final_check=args.final_check, population=args.population,
                         strategy=args.strategy, cost_model=args.cost_model, space=args.space, plot=args.plot)
    elif job.command == "report":
        from .report import format_report, report
        if args.carry_over:
            from .carry_over import carry_over
            for c in carry_over(args.database, job.target):
                print(f"carried over: {c.layer}: {c.was} -> {c.rule} (same machine code), {c.ms:.3f} ms")
        print(format_report(report(args.database, job.target), args.database, job.target), end="")
    elif job.command == "space":
        from . import space
        from .layers import request_of
        (layer, shape), = job.layers
        print(space.describe(request_of(layer, shape, job.dtype), job.target, args.space), end="")
    else:
        from . import export
        (layer, shape), = job.layers
        manifest = export.export_library(layer, shape, args.out, target=job.target, dtype=job.dtype,
                                         database=False if args.no_tuned else args.database)
        print(json.dumps(manifest, indent=2))


# --------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    debug_help = f"on an error, print the full traceback (also: {DEBUG_ENV}=1)"
    parser = _Parser(prog="python -m compiler", description="Bad input is reported as one line "
                     f"'error: ...' with exit status 2, before anything is compiled; {debug_help}.")
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)
    common = _Parser(add_help=False)
    # SUPPRESS: a subcommand's default must not undo a top-level --debug
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    common.add_argument("--dry-run", action="store_true", help="check every argument (layers, shapes, "
                        "target, files) and say what would run, without compiling, tuning or writing")
    dtypes = "float32, float64, float16 or bfloat16"
    targets = "llvm (this CPU), cuda (this GPU), cuda/sm_70 ... cuda/sm_90, or a JSON-dict target"

    bench = sub.add_parser("bench", parents=[common],
                           help="benchmark against torch.nn (default suite, or one layer)")
    bench.add_argument("--layer", help='e.g. "Conv2d(64, 64, 3, padding=1)"')
    bench.add_argument("--input-shape", help=SHAPE_HELP)
    bench.add_argument("--layers-file", help="one 'LAYER ; N,C,H,W' per line, instead of the suite")
    bench.add_argument("--threads", type=int, help="threads for both sides (default: TVM_NUM_THREADS)")
    bench.add_argument("--no-tuned", action="store_true", help="skip the tuned column")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                       help="cuda: both sides on the local GPU (torch uses cuDNN)")
    bench.add_argument("--models", nargs="*", metavar="NAME", help="whole networks (compiler.zoo; all when "
                       "none is named), torch against their fused and unfused conversions")
    bench.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                       help="element type of inputs and layers, both sides (default float32)")
    bench.add_argument("--batch", type=int, help="batch size of every layer's input (default: each shape's own)")
    bench.add_argument("--channels-last", action="store_true", help="inputs in torch.channels_last format")
    bench.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=False,
                       help="--device cuda, float32: let cuDNN use TF32 tensor cores (torch's default; ours "
                            "compute exact float32); default off")
    bench.add_argument("--csv", help="also write the table as CSV")
    bench.add_argument("--json", help="also write the table as JSON")
    bench.add_argument("--backward", action="store_true",
                       help="time a training step per layer (forward + input, weight, bias gradients) instead")

    tune = sub.add_parser("tune", parents=[common],
                          help="tune layers with MetaSchedule into a tuning database")
    tune.add_argument("--layer", help='e.g. "Conv2d(64, 64, 3, padding=1)"')
    tune.add_argument("--input-shape", help=SHAPE_HELP)
    tune.add_argument("--layers-file", help="one 'LAYER ; N,C,H,W' per line")
    tune.add_argument("--suite", action="store_true", help="the benchmark's default suite")
    tune.add_argument("--model", metavar="NAME", help="every conv workload of a network (compiler.zoo), "
                      "tuned across tasks by MetaSchedule's task scheduler; --trials is then the model's budget")
    tune.add_argument("--no-fuse", action="store_true", help="with --model: the unfused workloads")
    tune.add_argument("--target", default="llvm", help=targets)
    tune.add_argument("--trials", type=int, default=64, help="search trials per layer (records already "
                      "in the database count, so a rerun resumes; 0: only re-measure the hand schedule "
                      "beside the best records)")
    tune.add_argument("--trials-per-iter", type=int, default=16)
    tune.add_argument("--dtype", default="float32", help=dtypes)
    tune.add_argument("--work-dir", help="database folder (default: tuning_logs/<target key>)")
    tune.add_argument("--rpc-tracker", help="HOST:PORT of a tvm.rpc tracker to measure on")
    tune.add_argument("--rpc-key", help="device key registered with the tracker")
    tune.add_argument("--seed", type=int, help="seed the search's random choices (same seed, same candidates)")
    tune.add_argument("--population", type=int, default=512, help="evolutionary search population")
    tune.add_argument("--strategy", default="evolutionary", choices=STRATEGIES,
                      help="MetaSchedule's search strategy (default evolutionary)")
    tune.add_argument("--cost-model", default="xgboost", choices=COST_MODELS,
                      help="the evolutionary search's cost model (default xgboost)")
    tune.add_argument("--space", default="both", choices=SPACES, help="design spaces searched: ours (the "
                      "hand-written rule's, its tiles as decisions around the hand choice), generic "
                      "(MetaSchedule's) or both (default)")
    tune.add_argument("--final-check", type=int, default=3, help="re-measure the hand schedule and this "
                      "many best records side by side at the end (0: skip)")
    tune.add_argument("--plot", action="store_true", help="also draw each curve JSON as a PNG beside it "
                      "(needs matplotlib: pip install -e '.[plot]')")
    tune.add_argument("--verbose", action="store_true", help="MetaSchedule's log on stdout too")

    space = sub.add_parser("space", parents=[common], help="print a layer's design spaces: each trace, its "
                           "decision points (sample_* instructions), default decisions, number of choices")
    space.add_argument("--layer", help='e.g. "Conv2d(64, 64, 3, padding=1)"')
    space.add_argument("--input-shape", help=SHAPE_HELP)
    space.add_argument("--target", default="llvm", help=targets)
    space.add_argument("--dtype", default="float32", help=dtypes)
    space.add_argument("--space", default="both", choices=SPACES, help="ours (the hand-written rule's), generic "
                       "(MetaSchedule's post-order-apply) or both (default)")

    report = sub.add_parser("report", parents=[common], help="summarise a tuning database: per workload "
                            "trials, best against the hand-written schedule, trials to within 10%%")
    report.add_argument("database", help="a database folder (e.g. tuning_logs/llvm-znver4 or a --work-dir)")
    report.add_argument("--target", help="the records' target (default: from the folder's name, "
                        "llvm-<mcpu> or cuda-<arch>)")
    report.add_argument("--carry-over", action="store_true", help="first commit again, under its rule's "
                        "current version, each stale hand record whose schedule compiles to the same machine "
                        "code as the rule's current one (a version bump that changed only the trace); "
                        "writes into DB")

    build = sub.add_parser("build", parents=[common],
                           help="ahead-of-time build: shared library + manifest.json")
    build.add_argument("--layer", help='e.g. "Conv2d(64, 64, 3, padding=1)"')
    build.add_argument("--input-shape", help=SHAPE_HELP)
    build.add_argument("--model", metavar="NAME", help="a whole network (compiler.zoo): one library for "
                       "all its conv kernels, the converted model and a runtime-only loader")
    build.add_argument("--no-fuse", action="store_true", help="with --model: no BatchNorm folding or fusion")
    build.add_argument("--target", default="llvm", help=targets)
    build.add_argument("--dtype", default="float32", help=dtypes)
    build.add_argument("--database", help="tuning database folder (default: tuning_logs/<target key>)")
    build.add_argument("--no-tuned", action="store_true", help="hand-written schedule only")
    build.add_argument("--out", required=True, help="output folder (created if missing)")
    return parser


def _glue_negative_shapes(argv: Sequence[str]) -> List[str]:
    """``--input-shape -1,8,14,14`` as ``--input-shape=-1,8,14,14``: argparse would take the value
    for an option and answer 'expected one argument' instead of saying what is wrong with it."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--input-shape" and i + 1 < len(argv) and re.match(r"-\d", argv[i + 1]):
            out.append(f"--input-shape={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _debug_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _report(error: BaseException, debug: bool, status: int, unexpected: bool = False) -> int:
    if debug:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        return status
    message = str(error)
    if unexpected:
        print(f"error: {type(error).__name__}: {message}", file=sys.stderr)
        print(f"(run again with --debug, or {DEBUG_ENV}=1, for the full traceback)", file=sys.stderr)
    else:
        one_line = " ".join(line.strip() for line in message.splitlines() if line.strip())
        print(f"error: {one_line or type(error).__name__}", file=sys.stderr)
    return status


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_env() or "--debug" in argv
    try:
        args = build_parser().parse_args(_glue_negative_shapes(argv))
        debug = debug or getattr(args, "debug", False)
        job = prepare(args)
    except (UsageError, ValueError, TypeError, RuntimeError) as e:
        return _report(e, debug, USAGE_STATUS)
    if args.dry_run:
        _describe(job)
        return 0
    try:
        _run(job, args)
    except Exception as e:  # noqa: BLE001 - reported in one line (the traceback with --debug)
        return _report(e, debug, FAILURE_STATUS, unexpected=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
