"""The version policy, enforced: a hand-written rule that changes the schedule it makes must bump its
``version`` (tuning records name the rule and version that made them, so an old record never
shadows the rule as it is now: tuning_logs/README.md).  Each case's schedule is fingerprinted in
``rule_fingerprints.json``; after a deliberate change, bump the rule's version and regenerate with
``python tests/test_rule_versions.py``."""
import hashlib
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from compiler import build, records  # noqa: E402
from compiler.layers import batched_shape, spec_of  # noqa: E402
from compiler.request import KernelRequest  # noqa: E402
from schedules import rules_for  # noqa: E402
from targets import resolve  # noqa: E402

FINGERPRINTS = HERE / "rule_fingerprints.json"
#: fixed targets (never the host), so the fingerprints are the same on every machine
TARGETS = {"znver4": {"kind": "llvm", "mcpu": "znver4", "num-cores": 2},
           "znver3": {"kind": "llvm", "mcpu": "znver3", "num-cores": 2},
           "sm_80": "cuda/sm_80", "sm_90": "cuda/sm_90"}
#: (target, layer, input shape, dtype[, rule][, "NHWC"]): every forward rule of both chains, on both CPU
#: vector widths; a case naming a rule applies that rule alone (the fallback, which the chain never
#: reaches); "NHWC": the layout channels_last calls ask for
CASES = [("znver4", "Conv2d(64, 64, 3, padding=1)", "1,64,56,56", "float32"),
         ("znver3", "Conv2d(64, 64, 3, padding=1)", "1,64,56,56", "float32"),
         ("znver4", "Conv2d(256, 256, 3, padding=2, dilation=2)", "1,256,28,28", "float32"),
         ("znver4", "Conv2d(32, 32, 3, padding=1, groups=32)", "1,32,112,112", "float32"),
         ("znver3", "Conv2d(144, 144, 3, stride=2, padding=1, groups=144)", "1,144,56,56", "float32"),
         ("znver3", "Conv2d(384, 384, 7, padding=3, groups=384)", "1,384,14,14", "float32"),
         ("znver4", "Conv2d(256, 256, 3, padding=1, groups=32)", "1,256,28,28", "float32"),
         ("znver4", "Conv2d(4, 6, 3, padding=1)", "1,4,8,8", "float32"),
         ("znver4", "ConvTranspose2d(256, 128, 4, stride=2, padding=1)", "1,256,16,16", "float32"),
         ("znver3", "ConvTranspose2d(16, 3, 3, stride=2, padding=1)", "1,16,8,8", "float32"),
         ("znver3", "Conv2d(16, 96, 1)", "1,16,112,112", "float32"),
         ("znver4", "Conv2d(4, 6, 3, padding=1)", "1,4,8,8", "float32", "cpu-fallback"),
         ("znver4", "Conv2d(4, 6, 3, padding=1)", "1,4,8,8", "float64"),
         ("sm_80", "Conv2d(64, 64, 3, padding=1)", "1,64,56,56", "float32"),
         ("sm_80", "ConvTranspose2d(16, 8, 4, stride=2, padding=1)", "1,16,8,8", "float32"),
         ("sm_80", "Conv2d(32, 32, 3, padding=1)", "1,32,16,16", "float16"),
         # cuda-direct's register-blocked tile (batch 32; exact FP32, which the TF32 rule leaves to it)
         ("sm_90", "Conv2d(128, 128, 3, padding=1)", "32,128,28,28", "float32", "cuda-direct"),
         # channels_last calls' NHWC kernels (prepacked weights, as the modules take them)
         ("znver3", "Conv2d(96, 96, 7, padding=3, groups=96)", "1,96,56,56", "float32", "NHWC"),
         ("znver3", "Conv2d(96, 192, 2, stride=2)", "1,96,56,56", "float32", "NHWC"),
         ("znver3", "Conv2d(64, 64, 3, padding=1)", "1,64,56,56", "float32", "NHWC"),
         ("znver4", "Conv2d(256, 256, 3, padding=1)", "1,256,14,14", "float32", "NHWC"),
         ("sm_90", "Conv2d(128, 128, 3, padding=1)", "32,128,28,28", "float16", "NHWC"),
         ("sm_90", "Conv2d(144, 144, 3, padding=1, groups=144)", "8,144,56,56", "float16", "NHWC")]


def _case_id(case) -> str:
    return " ; ".join(case)


def fingerprint(case) -> dict:
    """The rule that schedules ``case``, its version, and a digest of its schedule (without the mark)."""
    target_name, layer, shape, dtype, *rest = case
    layout = "NHWC" if "NHWC" in rest else "NCHW"
    rule = [name for name in rest if name != "NHWC"]
    spec = spec_of(layer)
    request = KernelRequest(spec, batched_shape([int(v) for v in shape.split(",")]), dtype,
                            spec.output_padding if spec.transposed else None, layout=layout)
    target = resolve(TARGETS[target_name])
    chain = [r for r in rules_for(target) if r.name in rule] if rule else None
    hand = build.schedule(request, target, rules=chain, prepacked=layout == "NHWC")
    mark = records.rule_mark(hand.trace)
    digest = hashlib.sha256(records.unmarked_key(hand.trace).encode()).hexdigest()[:20]
    return {"rule": mark.rule, "version": mark.version, "schedule": digest}


def _recorded() -> dict:
    return json.loads(FINGERPRINTS.read_text()) if FINGERPRINTS.exists() else {}


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_a_changed_schedule_has_a_new_rule_version(case):
    recorded = _recorded().get(_case_id(case))
    assert recorded is not None, f"no fingerprint for {_case_id(case)}: run python tests/test_rule_versions.py"
    now = fingerprint(case)
    if (now["rule"], now["version"]) == (recorded["rule"], recorded["version"]):
        assert now["schedule"] == recorded["schedule"], (
            f"{now['rule']} version {now['version']} now makes another schedule for {_case_id(case)}: "
            "bump the rule's version (its old tuning records must not shadow it), then regenerate the "
            "fingerprints with python tests/test_rule_versions.py")
    else:
        pytest.fail(f"{_case_id(case)} is now scheduled by {now['rule']}:{now['version']} (the fingerprints "
                    f"say {recorded['rule']}:{recorded['version']}): regenerate them with "
                    "python tests/test_rule_versions.py")


def test_the_cases_cover_every_forward_rule():
    from schedules import CPU_RULES, CUDA_RULES
    forward = {r.name for r in CPU_RULES + CUDA_RULES if "forward" in r.operators}
    missing = forward - {entry["rule"] for entry in _recorded().values()}
    assert not missing, (f"rules without a fingerprint: {sorted(missing)}: add a case for each to CASES in "
                         "tests/test_rule_versions.py, then python tests/test_rule_versions.py")


if __name__ == "__main__":
    FINGERPRINTS.write_text(json.dumps({_case_id(c): fingerprint(c) for c in CASES}, indent=1) + "\n")
    print(f"wrote {FINGERPRINTS}")
