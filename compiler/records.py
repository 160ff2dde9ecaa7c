"""The tuning-record database of a target: a folder of MetaSchedule JSON databases, one per run.

Layout: ``<db dir>/<run>/database_workload.json`` and ``database_tuning_record.json`` (MetaSchedule's
own JSONDatabase files, one line per workload / record).  Every tuning process writes only into a run
folder it holds an exclusive ``flock`` on, so concurrent tuners never share a file; a killed tuner's
lock dies with it and the next run adopts (and resumes) its folder.  Reading merges every run:
each line is parsed on its own with MetaSchedule's parsers, so a torn last line, a corrupt line or a
log from another TVM version is skipped with a warning naming the file and line, never a crash.
Records measured on another target than the one asked for are skipped (MetaSchedule's database
ignores the target; this folder's name is :func:`targets.target_key`).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import tvm_ffi
from tvm import tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from schedules.base import RULE_ANNOTATION
from targets import target_key

#: Environment variable naming a database folder (the one for the target, not its parent).
DATABASE_ENV = "TVM_CONV_DATABASE"
#: The shipped records: tuning_logs/<target key>/
SHIPPED = Path(__file__).resolve().parent.parent / "tuning_logs"
WORKLOADS, RECORDS, LOCK = "database_workload.json", "database_tuning_record.json", "lock"


class TuningLogWarning(UserWarning):
    """A tuning-log line was skipped (corrupt, torn by a kill, or from another TVM version)."""


def database_dir(target: Target, path=None) -> Path:
    """The folder holding ``target``'s records: ``path``, else $TVM_CONV_DATABASE, else the shipped one."""
    if path is not None:
        return Path(path)
    if os.environ.get(DATABASE_ENV):
        return Path(os.environ[DATABASE_ENV])
    return SHIPPED / target_key(target)


def _run_dirs(db_dir: Path) -> List[Path]:
    return sorted(p.parent for p in db_dir.glob(f"*/{WORKLOADS}"))


def _lines(path: Path, workloads=None) -> Iterator[Tuple[int, int, object]]:
    """(line number, index, parsed JSON) of each well-formed line; warns about the others.

    ``index`` counts every non-empty line, well-formed or not: it is the position MetaSchedule's
    records use to name their workload, so a skipped line must not shift the lines after it.
    ``workloads``: read only record lines naming one of these workload indices.
    """
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for index, (number, line) in enumerate((n, line) for n, line in enumerate(f, 1) if line.strip()):
            if workloads is not None:
                owner = _record_index(line)
                if owner is not None and owner not in workloads:
                    continue             # another workload's record (unreadable lines still warn)
            try:
                yield number, index, json.loads(line)
            except ValueError as err:
                warnings.warn(f"{path}:{number}: skipped, not JSON ({err}); the line is torn or corrupt",
                              TuningLogWarning, stacklevel=3)


def _record_index(line: str) -> Optional[int]:
    """The workload index a record line starts with (``[7, [...``), without parsing the rest."""
    line = line.lstrip()
    head = line[1:line.find(",")] if line.startswith("[") else ""
    return int(head) if head.strip().isdigit() else None


def _run_records(run: Path, key: str, workload_hash: Optional[str] = None,
                 database: Optional[ms.database.Database] = None):
    """One run folder's valid records for target ``key``, in the order they were written:
    ``(workload hash, record)`` (only those of the workload whose structural hash is
    ``workload_hash``, when given: parsing a record's trace costs ~5 ms, so a lookup reads its own
    workload's records, not the whole folder's).  Workloads are committed to ``database`` if given."""
    workloads: Dict[int, Tuple[str, ms.database.Workload]] = {}
    for number, index, obj in _lines(run / WORKLOADS):
        if workload_hash is not None and not (isinstance(obj, list) and obj and str(obj[0]) == workload_hash):
            continue
        try:
            workload = ms.database.Workload.from_json(obj)
            if database is not None:
                workload = database.commit_workload(workload.mod)
            workloads[index] = (str(obj[0]), workload)
        except Exception as err:  # noqa: BLE001 - TVM raises a variety of errors on foreign IR
            warnings.warn(f"{run / WORKLOADS}:{number}: skipped workload, unreadable by this TVM "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:200]})",
                          TuningLogWarning, stacklevel=3)
    wanted = None if workload_hash is None else set(workloads)
    for number, _, obj in _lines(run / RECORDS, wanted):
        try:
            index, record_json = obj
            record = ms.database.TuningRecord.from_json(record_json, workloads[index][1])
        except Exception as err:  # noqa: BLE001
            warnings.warn(f"{run / RECORDS}:{number}: skipped record ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200] if str(err) else 'bad workload index'})",
                          TuningLogWarning, stacklevel=3)
            continue
        if record.target is not None and target_key(record.target) != key:
            continue
        if not record.run_secs:
            continue                       # a failed build/run: no measurement to compare
        yield workloads[index][0], record


def _read_run(run: Path, database: ms.database.Database, key: str,
              workload_hash: Optional[str] = None) -> None:
    """Commit one run folder's valid records for target ``key`` into ``database``."""
    for _, record in _run_records(run, key, workload_hash, database):
        database.commit_tuning_record(record)


def in_order(db_dir: Path, target: Target) -> Iterator[Tuple[Path, str, ms.database.TuningRecord]]:
    """Every valid record of ``db_dir`` for ``target`` as ``(run folder, workload hash, record)``,
    run by run (by the creation time their names end with) and line by line: the order a search
    measured them, which :mod:`compiler.report` reads trials from."""
    for run in sorted(_run_dirs(Path(db_dir)), key=lambda p: (p.name[-15:], p.name)):
        for workload, record in _run_records(run, target_key(target)):
            yield run, workload, record


_LOADED: Dict[str, Tuple[tuple, ms.database.Database]] = {}
_LOADED_LOCK = threading.Lock()


def _stamp(db_dir: Path) -> tuple:
    """Changes whenever any record file of the folder changes (a new run, a new line)."""
    stamp = []
    for run in _run_dirs(db_dir):
        for name in (WORKLOADS, RECORDS):
            try:
                st = (run / name).stat()
                stamp.append((str(run / name), st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                pass
    return tuple(stamp)


def load(db_dir: Path, target: Target, workload_hash: Optional[str] = None) -> ms.database.Database:
    """Every valid record of ``db_dir`` for ``target`` (of one workload, given its structural hash),
    merged in memory (cached until a file changes)."""
    key = target_key(target)
    cache_key = f"{Path(db_dir).resolve()}|{key}|{workload_hash}"
    stamp = _stamp(Path(db_dir))
    with _LOADED_LOCK:
        hit = _LOADED.get(cache_key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        database = ms.database.MemoryDatabase()
        for run in _run_dirs(Path(db_dir)):
            _read_run(run, database, key, workload_hash)
        _LOADED[cache_key] = (stamp, database)
        return database


def workload_hash(mod) -> str:
    """MetaSchedule's workload key: the structural hash, as database_workload.json writes it."""
    return str(tvm_ffi.structural_hash(mod))


def workload_records(db_dir: Path, target: Target, mod) -> List[ms.database.TuningRecord]:
    """Every measured record of exactly the workload ``mod`` in ``db_dir``, fastest first, reading
    only that workload's lines."""
    return records_of(load(db_dir, target, workload_hash(mod)), mod)


def records_of(database: ms.database.Database, mod) -> List[ms.database.TuningRecord]:
    """Every measured record of exactly this workload, fastest first."""
    if not database.has_workload(mod):
        return []
    return list(database.get_top_k(database.commit_workload(mod), 1 << 30))


def mean_secs(record: ms.database.TuningRecord) -> float:
    """A record's run time, as MetaSchedule ranks records (the mean of its measurements)."""
    return sum(map(float, record.run_secs)) / len(record.run_secs)


def trace_key(trace) -> str:
    """A canonical text of a schedule trace (to recognise the hand-written schedule among records)."""
    return json.dumps(trace.as_json(remove_postproc=True), sort_keys=True, default=_plain)


def _plain(value):
    """JSON for a trace's TVM values: an integer annotation is an IntImm in a trace made here and a
    plain int in one read back from a database; both are the same number."""
    if isinstance(value, tirx.IntImm):
        return int(value.value)
    return str(value)


@dataclass(frozen=True)
class RuleMark:
    """Which hand-written rule, at which version, made a schedule (``schedules.base.mark_rule``)."""

    rule: str
    version: int


def rule_mark(trace) -> Optional[RuleMark]:
    """The rule mark a trace carries, or None (MetaSchedule's generic space, or a record made
    before schedules were marked)."""
    for inst in trace.insts:
        if inst.kind.name == "Annotate" and str(inst.attrs[0]) == RULE_ANNOTATION:
            name, _, version = str(inst.inputs[1]).rpartition(":")
            return RuleMark(name, int(version)) if version.isdigit() else None
    return None


def unmarked_key(trace) -> str:
    """:func:`trace_key` of the trace without its rule mark: what the same schedule's record said
    before schedules were marked."""
    insts, decisions = trace.as_json(remove_postproc=True)
    marks = [i for i, inst in enumerate(insts) if inst[0] == "Annotate" and inst[2] == [RULE_ANNOTATION]]
    blocks = {insts[i][1][0] for i in marks}
    drop = set(marks) | {i for i, inst in enumerate(insts)
                         if inst[0] == "GetSBlock" and inst[2][0] == "root" and set(inst[3]) <= blocks}
    kept = [inst for i, inst in enumerate(insts) if i not in drop]
    shift = lambda index: index - sum(1 for d in drop if d < index)  # noqa: E731
    return json.dumps([kept, [[shift(int(i)), d] for i, d in decisions]], sort_keys=True, default=_plain)


def samples(trace) -> int:
    """How many sampling instructions (``Sample*``: MetaSchedule's decisions) a trace holds."""
    return sum(1 for inst in trace.insts if inst.kind.name.startswith("Sample"))


def rule_versions(target: Target) -> Dict[str, int]:
    """Each hand-written rule of ``target``'s chain: its current version."""
    from schedules import rules_for
    return {rule.name: rule.version for rule in rules_for(target)}


@dataclass
class Ranked:
    """A workload's records sorted out against its current hand-written schedule (each list fastest
    first): see :func:`classify`."""

    hand: List[ms.database.TuningRecord]        # the hand schedule as its rule makes it now
    searched: List[ms.database.TuningRecord]    # other schedules still valid (search results)
    stale: List[ms.database.TuningRecord]       # made by an older (or a removed) rule version

    @property
    def valid(self) -> List[ms.database.TuningRecord]:
        return sorted(self.hand + self.searched, key=mean_secs)

    def distinct_searched(self) -> int:
        return len({trace_key(r.trace) for r in self.searched})


def classify(records: List[ms.database.TuningRecord], hand_trace, versions: Dict[str, int]) -> Ranked:
    """Sort ``records`` (fastest first) into the current hand schedule's, valid search records and
    stale ones.

    A record is the hand schedule's when its trace is the hand trace (rule mark included), or, for
    records made before marks, the hand trace without its mark.  It is stale when its mark names a
    rule version other than the chain's current one (the rule changed since: its old schedule, or
    a search around it, must not shadow the rule as it is now), or when it is an unmarked trace
    without sampling decisions that is not the hand trace: a hand schedule from before marks (the
    generic search always samples).  Everything else is a search record.
    """
    hand_key, legacy_key = trace_key(hand_trace), unmarked_key(hand_trace)
    ranked = Ranked([], [], [])
    for record in records:
        key, mark = trace_key(record.trace), rule_mark(record.trace)
        if key == hand_key or (mark is None and key == legacy_key):
            ranked.hand.append(record)
        elif mark is not None and versions.get(mark.rule) != mark.version:
            ranked.stale.append(record)
        elif mark is None and not samples(record.trace):
            ranked.stale.append(record)
        else:
            ranked.searched.append(record)
    return ranked


class RunFolder:
    """A run folder this process holds exclusively (``with`` releases it); see the module docstring."""

    def __init__(self, db_dir: Path):
        db_dir.mkdir(parents=True, exist_ok=True)
        self.path, self._fd = None, None
        for run in sorted(p for p in db_dir.iterdir() if p.is_dir() and p.name.startswith("run-")):
            if self._try_lock(run):
                if self._healthy(run):
                    break
                self._release()
        if self.path is None:
            name = f"run-{socket.gethostname()}-{os.getpid()}-{time.strftime('%Y%m%d-%H%M%S')}"
            run = db_dir / name
            run.mkdir()
            if not self._try_lock(run):      # pragma: no cover - a fresh name nobody else knows
                raise RuntimeError(f"cannot lock new tuning folder {run}")

    def _try_lock(self, run: Path) -> bool:
        fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.path, self._fd = run, fd
        return True

    def _healthy(self, run: Path) -> bool:
        """Adopt a folder only if MetaSchedule can append to it: drop a torn last line, refuse others."""
        for name in (WORKLOADS, RECORDS):
            path = run / name
            if not path.exists():
                continue
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):          # a kill mid-append: drop the torn line
                cut = data.rfind(b"\n") + 1
                warnings.warn(f"{path}: dropped a torn last line (an interrupted write)", TuningLogWarning)
                path.write_bytes(data[:cut])
                data = data[:cut]
            for line in data.splitlines():
                try:
                    json.loads(line)
                except ValueError:
                    return False
        return True

    def _release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        self.path, self._fd = None, None

    def database(self) -> ms.database.JSONDatabase:
        return ms.database.JSONDatabase(path_workload=str(self.path / WORKLOADS),
                                        path_tuning_record=str(self.path / RECORDS), allow_missing=True)

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self._release()
