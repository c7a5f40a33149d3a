"""A profile's table of contents: the book's ``_toc.yml`` cut to the pages the run makes.

The book's pages under ``generated/`` exist only where the profile runs their step (a baseline switched off, the
example own-scans chapter of a run of your own data). Jupyter Book refuses a ``file`` entry that does not exist and
warns on a ``glob`` that matches nothing, and the book is built with ``-W`` (warnings are errors): so a profile's
own book gets the toc without those entries, and without a part or a chapter's sections left empty.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path

import yaml

from nnsam2_utils.data.io import atomic_path, read_yaml
from nnsam2_utils.errors import ConfigError

#: The folder of the run's pages inside a book; other pages (intro, methods, stages) are the book's own sources.
GENERATED = "generated/"


def page_names(paths: Iterable[str | Path], book: str | Path) -> set[str]:
    """The toc names (``generated/05_oneshot``: relative to the book, no suffix) of notebook paths of a book."""
    book = Path(book).resolve()
    return {Path(p).resolve().relative_to(book).with_suffix("").as_posix() for p in paths}


def _kept(entry: dict, pages: set[str]) -> dict | None:
    """An entry of the toc with its sections cut to ``pages``; None when the entry itself is not made."""
    if "glob" in entry and entry["glob"].startswith(GENERATED):
        if not any(fnmatch.fnmatchcase(page, entry["glob"]) for page in pages):
            return None
    if "file" in entry and entry["file"].startswith(GENERATED) and entry["file"] not in pages:
        return None
    if "sections" not in entry:
        return dict(entry)
    sections = _entries(entry["sections"], pages)
    kept = {k: v for k, v in entry.items() if k != "sections"}
    return {**kept, "sections": sections} if sections else kept


def _entries(entries: list[dict], pages: set[str]) -> list[dict]:
    return [kept for entry in entries if (kept := _kept(entry, pages)) is not None]


def toc_for_pages(toc: dict, pages: Iterable[str]) -> dict:
    """``toc`` (a jb-book table of contents) without the ``generated/`` entries that none of ``pages`` fill: a
    ``file`` not among them, a ``glob`` matching none of them; a part whose chapters are all gone goes too."""
    pages = set(pages)
    result = {k: v for k, v in toc.items() if k not in ("parts", "chapters")}
    if "chapters" in toc:
        result["chapters"] = _entries(toc["chapters"], pages)
    if "parts" in toc:
        parts = [{**part, "chapters": _entries(part.get("chapters", []), pages)} for part in toc["parts"]]
        result["parts"] = [part for part in parts if part["chapters"]]
    return result


def write_toc(source: str | Path, target: str | Path, pages: Iterable[str]) -> Path:
    """Write the toc of ``source`` cut to ``pages`` (:func:`toc_for_pages`) to ``target``."""
    toc = read_yaml(Path(source), ConfigError)
    target = Path(target)
    with atomic_path(target) as tmp:
        text = yaml.safe_dump(toc_for_pages(toc, pages), sort_keys=False, allow_unicode=True)
        tmp.write_text(
            f"# {Path(source).name} cut to the pages this profile makes (nnsam2_utils/workflow/book_toc.py)\n" + text,
            encoding="utf-8",
        )
    return target
