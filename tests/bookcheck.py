"""Offline checks of the built book (``book/_build/html``).

Three checks, all working from disk with no network:

* :func:`check_links` parses every HTML page (stdlib :mod:`html.parser`) and verifies that
  each relative ``href``/``src`` resolves to a file inside the book and that each
  ``#fragment`` exists as an ``id`` (or ``name``) in the page it points into. External
  ``http(s)`` links are reported as warnings.
* :func:`check_content` fails on what a reader must not see: a Python warning or a traceback
  in a cell's output, more than :data:`MAX_OUTPUT_LINES` lines of log output in one cell, an
  absolute path of the build machine, two sidebar entries with the same title, a CSV link
  pointing to the same file as another link of the page.
* :func:`browse` opens the pages in headless Chromium from ``file://`` URLs and fails on
  images that did not load, JavaScript exceptions, resources that failed to load from disk
  and tables wider than the page's content column with no scroll box; on every slice viewer
  (``data-nnsam2-viewer``, :mod:`nnsam2_utils.report.viewer`) it moves the slider and the arrow keys
  and fails when the shown frame, its image or its slice label does not follow; it also saves
  full-page screenshots of chosen pages.

The browser is driven over the Chrome DevTools Protocol on ``--remote-debugging-pipe``
(NUL-terminated JSON on file descriptors 3 and 4), so nothing beyond the standard library
and a ``chromium`` binary is needed: no chromedriver, no Selenium, no TCP port.
External ``http(s)`` requests are blocked in the browser, so the result does not depend on
whether the machine is online; blocked requests are reported as warnings.

Command line: ``python -m bookcheck HTML_ROOT --out DIR`` (exit status 1 when
a check fails).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import logging
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

#: Folders of a Sphinx build whose ``.html`` files are templates or copies, not pages.
SKIPPED_DIRS = ("_static", "_sources", "_images")
#: Link attributes that are checked.
LINK_ATTRS = ("href", "src", "poster", "data")
#: URL schemes that are never checked.
IGNORED_SCHEMES = ("mailto", "javascript", "data", "tel", "blob", "about")
#: Pages screenshotted by default (book-relative path -> file name in ``out_dir``).
DEFAULT_SCREENSHOTS = {"intro.html": "intro.png", "generated/04_results.html": "04_results.png"}
#: Known, harmless errors of the pinned toolchain, allowed by the CLI unless ``--strict``:
#: Sphinx < 8.2 emits inline ``add_js_file(None, body=...)`` scripts twice (sphinx-doc/sphinx
#: PR #13402), so sphinx-thebe's ``const THEBE_JS_URL`` is declared twice on every page.
KNOWN_SPHINX_ISSUES = (r"Identifier 'THEBE_JS_URL' has already been declared",)
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")


@dataclass(frozen=True)
class Problem:
    """One finding: ``severity`` is ``"error"`` (fails the check) or ``"warning"``."""

    kind: str
    page: str
    message: str
    attribute: str = ""
    target: str = ""
    severity: str = "error"

    def __str__(self) -> str:
        where = (
            f" [{self.attribute}={self.target!r}]" if self.attribute else (f" [{self.target}]" if self.target else "")
        )
        return f"{self.severity.upper()} {self.kind}: {self.page}{where}: {self.message}"


def downgrade(problems: Iterable[Problem], allow: Iterable[str] = ()) -> list[Problem]:
    """Turn errors whose text matches one of the ``allow`` regexes into warnings (known, accepted)."""
    patterns = [re.compile(pattern) for pattern in allow]
    out = []
    for problem in problems:
        if problem.severity == "error" and any(p.search(str(problem)) for p in patterns):
            problem = replace(problem, severity="warning", message=f"{problem.message} (allowed)")
        out.append(problem)
    return out


def errors(problems: Iterable[Problem]) -> list[Problem]:
    """The problems that fail a check."""
    return [p for p in problems if p.severity == "error"]


def warnings(problems: Iterable[Problem]) -> list[Problem]:
    """The problems that are only warnings."""
    return [p for p in problems if p.severity != "error"]


@dataclass
class BrowseReport:
    """What :func:`browse` saw: problems, pages visited, screenshots written, time taken."""

    problems: list[Problem] = field(default_factory=list)
    pages: list[str] = field(default_factory=list)
    screenshots: dict[str, Path] = field(default_factory=dict)
    viewers: list[str] = field(default_factory=list)  # "page: title (n slices)" of each slice viewer that worked
    seconds: float = 0.0

    @property
    def errors(self) -> list[Problem]:
        return errors(self.problems)

    @property
    def warnings(self) -> list[Problem]:
        return warnings(self.problems)

    @property
    def ok(self) -> bool:
        return not self.errors


# ----------------------------------------------------------------------------------------
# Static link check
# ----------------------------------------------------------------------------------------


@dataclass
class ParsedPage:
    """The links (``(attribute, value)``) and anchor names found in one HTML page."""

    links: list[tuple[str, str]] = field(default_factory=list)
    anchors: set[str] = field(default_factory=set)


class _LinkParser(HTMLParser):
    """Collects link attributes, ``srcset`` candidates, meta refresh targets and ids."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = ParsedPage()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value for name, value in attrs if value is not None}
        if "id" in values:
            self.page.anchors.add(values["id"])
        if tag == "a" and "name" in values:
            self.page.anchors.add(values["name"])
        for name in LINK_ATTRS:
            if name in values and not (name == "data" and tag != "object"):
                self.page.links.append((name, values[name].strip()))
        if "srcset" in values:
            self.page.links += [("srcset", url) for url in parse_srcset(values["srcset"])]
        if tag == "meta" and values.get("http-equiv", "").lower() == "refresh":
            target = meta_refresh_url(values.get("content", ""))
            if target:
                self.page.links.append(("http-equiv=refresh", target))

    handle_startendtag = handle_starttag


def parse_srcset(srcset: str) -> list[str]:
    """The URLs of a ``srcset`` attribute (descriptors dropped)."""
    return [part.split()[0] for part in srcset.split(",") if part.strip()]


def meta_refresh_url(content: str) -> str | None:
    """The URL of a ``<meta http-equiv=refresh content="0; url=...">``, if any."""
    for part in content.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "url":
            return value.strip().strip("'\"")
    return None


def parse_html(path: Path) -> ParsedPage:
    """Parse one HTML file into its links and anchors."""
    parser = _LinkParser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    return parser.page


def find_pages(html_root: Path, skip_dirs: Iterable[str] = SKIPPED_DIRS) -> list[str]:
    """Book-relative POSIX paths of the HTML pages, sorted, skipping ``skip_dirs``."""
    skip = set(skip_dirs)
    pages = [p.relative_to(html_root) for p in html_root.rglob("*.html")]
    return sorted(p.as_posix() for p in pages if not (set(p.parts[:-1]) & skip))


def resolve_target(html_root: Path, page: str, path: str) -> Path:
    """The file a relative URL path of ``page`` points to (``dir/`` -> ``dir/index.html``)."""
    base = html_root / page
    target = base if path == "" else (base.parent / unquote(path))
    target = Path(os.path.normpath(target))
    if target.is_dir():
        target = target / "index.html"
    return target


def _is_inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def check_link(html_root: Path, page: str, attribute: str, url: str, anchors: dict[str, set[str]]) -> Problem | None:
    """Check one URL found in ``page``; ``anchors`` caches the ids of parsed pages."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in IGNORED_SCHEMES:
        return None
    if scheme or parts.netloc:
        if scheme in ("http", "https", "") or parts.netloc:
            return Problem("external-link", page, "external link (not checked offline)", attribute, url, "warning")
        return Problem("broken-link", page, f"{scheme}: URL does not work in a published book", attribute, url)
    if parts.path.startswith("/"):
        return Problem("broken-link", page, "absolute path: breaks when the book is opened from disk", attribute, url)
    root = Path(os.path.normpath(html_root))
    target = resolve_target(root, page, parts.path)
    if not _is_inside(target, root):
        return Problem("broken-link", page, "points outside the book", attribute, url)
    if not target.is_file():
        return Problem("broken-link", page, f"target not found: {target.relative_to(root).as_posix()}", attribute, url)
    fragment = unquote(parts.fragment)
    if not fragment or fragment.startswith(":~:") or target.suffix.lower() not in (".html", ".htm"):
        return None
    key = target.relative_to(root).as_posix()
    if key not in anchors:
        anchors[key] = parse_html(target).anchors
    if fragment not in anchors[key]:
        where = "this page" if key == page else key
        return Problem("missing-fragment", page, f"no id or name {fragment!r} in {where}", attribute, url)
    return None


def check_links(html_root: Path, pages: list[str] | None = None, allow: Iterable[str] = ()) -> list[Problem]:
    """Offline internal-link check of a built HTML tree; external links come as warnings.

    ``pages`` (book-relative paths) defaults to :func:`find_pages`; errors matching an
    ``allow`` regex are downgraded to warnings (see :func:`downgrade`).
    """
    html_root = Path(html_root)
    if not html_root.is_dir():
        raise FileNotFoundError(f"{html_root}: not a folder (build the book first)")
    problems: list[Problem] = []
    anchors: dict[str, set[str]] = {}
    for page in pages if pages is not None else find_pages(html_root):
        parsed = parse_html(html_root / page)
        anchors[page] = parsed.anchors
        for attribute, url in parsed.links:
            problem = check_link(html_root, page, attribute, url, anchors)
            if problem is not None:
                problems.append(problem)
    problems = downgrade(problems, allow)
    log.info("link check of %s: %d errors, %d warnings", html_root, len(errors(problems)), len(warnings(problems)))
    return problems


# ----------------------------------------------------------------------------------------
# Content check: what a reader must not see on a page
# ----------------------------------------------------------------------------------------

#: Lines of text output (a log, a progress bar) one executed cell may show.
MAX_OUTPUT_LINES = 20
#: A Python warning as :mod:`warnings` prints it (``x.py:3: FutureWarning: soon``) or its repr.
WARNING_PATTERN = re.compile(r"\b(?:[A-Z][A-Za-z]*)?Warning\b(?::|\s*\()")
TRACEBACK_PATTERN = re.compile(r"Traceback \(most recent call last\)|^\w*(?:Error|Exception): ", re.MULTILINE)
#: Machine paths: the filesystem roots a build machine writes under (a path in prose, such as ``work/demo``, is fine).
MACHINE_PATH_PATTERN = re.compile(r"(?<![\w.~])/(?:home|root|tmp|work|Users|var/folders|opt)/[\w.-]+")
#: Output areas of an executed cell whose text is checked: streams (stdout/stderr), plain text, tracebacks.
OUTPUT_CLASS_PATTERN = re.compile(r"\boutput\b.*\b(stream|stderr|text_plain|traceback|error)\b")
VOID_TAGS = frozenset(
    ("area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr")
)


def default_machine_paths() -> list[str]:
    """Absolute paths of the machine running the check that a page must not show: the repository
    root, the work folder (``$NNSAM2_WORK``), the home folder and the temporary folder."""
    candidates = [Path(__file__).resolve().parents[1], Path.home(), Path(tempfile.gettempdir())]
    if os.environ.get("NNSAM2_WORK"):
        candidates.append(Path(os.environ["NNSAM2_WORK"]))
    paths = []
    for candidate in candidates:
        for path in {str(candidate), str(candidate.resolve())}:
            if path.count("/") >= 1 and len(path) > 1 and path not in paths:
                paths.append(path.rstrip("/"))
    return paths


def machine_path_pattern(paths: Iterable[str] = ()) -> re.Pattern[str]:
    """:data:`MACHINE_PATH_PATTERN` widened by the absolute ``paths`` (each as a whole path component)."""
    named = [
        re.escape(p.rstrip("/")) + r"(?![\w.-])[^\s'\"<>]*"
        for p in sorted(set(paths), key=len, reverse=True)
        if p.rstrip("/")
    ]
    return re.compile("|".join([*(rf"(?<![\w.~]){p}" for p in named), MACHINE_PATH_PATTERN.pattern]))


class _ContentParser(HTMLParser):
    """Text outputs of executed cells (grouped by cell), visible text, sidebar titles and links of one page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.outputs: list[str] = []  # the text of each stream / stderr / plain-text / traceback output block
        self.output_cell: list[int] = []  # for each output block, the cell it belongs to
        self.text: list[str] = []
        self.sidebar: list[str] = []
        self.links: list[tuple[str, str]] = []  # (href, link text) of the page's content (not the sidebar)
        self._stack: list[tuple[str, str]] = []  # (tag, class)
        self._output_depth: int | None = None
        self._cells = 0
        self._link: str | None = None
        self._link_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        cls = values.get("class", "")
        if tag in VOID_TAGS:
            return
        self._stack.append((tag, cls))
        if tag == "div" and "cell_output" in cls.split():
            self._cells += 1
        if self._output_depth is None and tag == "div" and OUTPUT_CLASS_PATTERN.search(cls):
            self._output_depth = len(self._stack)
            self.outputs.append("")
            self.output_cell.append(self._cells)
        if tag == "a":
            self._link, self._link_text = values.get("href", ""), []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID_TAGS:  # ``<div/>`` and the like: opened and closed at once
            self.handle_starttag(tag, attrs)
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._link is not None:
            text = " ".join("".join(self._link_text).split())
            if self._inside("bd-sidebar-primary"):
                if text:
                    self.sidebar.append(text)
            else:
                self.links.append((self._link, text))
            self._link = None
        if all(opened != tag for opened, _ in self._stack):
            return  # a stray end tag (or a void element's): nothing to close
        while self._stack:
            opened, _ = self._stack.pop()
            if self._output_depth is not None and len(self._stack) < self._output_depth:
                self._output_depth = None
            if opened == tag:
                break

    def _inside(self, cls: str) -> bool:
        return any(cls in c.split() for _, c in self._stack)

    def handle_data(self, data: str) -> None:
        if any(t in ("script", "style") for t, _ in self._stack):
            return
        if self._link is not None:
            self._link_text.append(data)
        if self._output_depth is not None:
            self.outputs[-1] += data
        if not self._inside("bd-sidebar-primary") and not self._inside("bd-header"):
            self.text.append(data)


def _lines(text: str) -> int:
    return text.strip().count("\n") + 1 if text.strip() else 0


def _link_file(html_root: Path, page: str, href: str) -> str | None:
    """The book-relative file a content link points to (None for an external or in-page link)."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc:
        return href.split("#")[0] if parts.scheme.lower() in ("http", "https") else None
    if not parts.path:
        return None
    root = Path(os.path.normpath(html_root))
    target = resolve_target(root, page, parts.path)
    return target.relative_to(root).as_posix() if _is_inside(target, root) else target.as_posix()


def check_content(
    html_root: Path,
    pages: list[str] | None = None,
    allow: Iterable[str] = (),
    machine_paths: Iterable[str] | None = None,
) -> list[Problem]:
    """What a reader must not see, page by page; each problem names the page and what is wrong.

    * ``warning-shown``: a Python warning (``FutureWarning: ...``) in a cell's output;
    * ``traceback-shown``: a traceback or ``SomeError: ...`` line in a cell's output;
    * ``long-output``: a cell whose text outputs (stdout, stderr, plain text) have more than
      :data:`MAX_OUTPUT_LINES` lines together;
    * ``machine-path``: an absolute path of the build machine in the page's text: one under
      the usual roots (:data:`MACHINE_PATH_PATTERN`) or under ``machine_paths`` (default:
      :func:`default_machine_paths`, this machine's repository root, work, home and temporary folders);
    * ``sidebar-duplicate``: two entries of the sidebar with the same title;
    * ``csv-link-duplicate``: a link to a CSV file that points to the same file as another link of
      the page (a table and the data it summarises must be two files).
    """
    html_root = Path(html_root)
    paths_pattern = machine_path_pattern(default_machine_paths() if machine_paths is None else machine_paths)
    problems: list[Problem] = []
    for page in pages if pages is not None else find_pages(html_root):
        parser = _ContentParser()
        parser.feed((html_root / page).read_text(encoding="utf-8", errors="replace"))
        parser.close()
        for kind, pattern in (("warning-shown", WARNING_PATTERN), ("traceback-shown", TRACEBACK_PATTERN)):
            shown = sorted({m.group(0).strip() for output in parser.outputs for m in pattern.finditer(output)})
            if shown:
                problems.append(Problem(kind, page, f"a cell's output shows {', '.join(map(repr, shown[:5]))}"))
        cells: dict[int, list[str]] = {}
        for cell, output in zip(parser.output_cell, parser.outputs):
            cells.setdefault(cell, []).append(output)
        for outputs in cells.values():
            lines = sum(_lines(o) for o in outputs)
            if lines > MAX_OUTPUT_LINES:
                first = next(o for o in outputs if o.strip()).strip().splitlines()[0][:80]
                problems.append(
                    Problem(
                        "long-output",
                        page,
                        f"a cell shows {lines} lines of output (at most {MAX_OUTPUT_LINES}; first: {first!r}):"
                        " send logs and progress bars to a file",
                    )
                )
        shown_paths = sorted({m.group(0) for m in paths_pattern.finditer("".join(parser.text))})
        if shown_paths:
            listed = ", ".join(map(repr, shown_paths[:5])) + (
                f" and {len(shown_paths) - 5} more" if len(shown_paths) > 5 else ""
            )
            problems.append(Problem("machine-path", page, f"shows the build machine's path {listed}"))
        repeated = sorted({t for t in parser.sidebar if parser.sidebar.count(t) > 1})
        if repeated:
            problems.append(Problem("sidebar-duplicate", page, f"sidebar entries with the same title: {repeated}"))
        targets: dict[str, list[str]] = {}
        for href, name in parser.links:
            target = _link_file(html_root, page, href)
            if target is not None and target.lower().endswith(".csv"):
                targets.setdefault(target, []).append(name or href)
        for target, names in sorted(targets.items()):
            if len(names) > 1:
                problems.append(
                    Problem(
                        "csv-link-duplicate",
                        page,
                        f"{len(names)} links ({', '.join(map(repr, names))}) point to the same file",
                        target=target,
                    )
                )
    return downgrade(problems, allow)


# ----------------------------------------------------------------------------------------
# Browser check (Chrome DevTools Protocol over --remote-debugging-pipe)
# ----------------------------------------------------------------------------------------


class CdpError(RuntimeError):
    """The browser failed, timed out or answered a command with an error."""


def find_chromium(explicit: str | None = None) -> str | None:
    """Path of a Chromium binary: ``explicit``, ``$NNSAM2_CHROMIUM`` or a usual name."""
    for candidate in (explicit, os.environ.get("NNSAM2_CHROMIUM"), *CHROMIUM_CANDIDATES):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def chromium_args(binary: str, profile_dir: Path) -> list[str]:
    """Command line of a headless Chromium speaking CDP on fds 3/4, with no network chatter."""
    return [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--mute-audio",
        "--hide-scrollbars",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile_dir}",
        "--remote-debugging-pipe",
        "about:blank",
    ]


class CdpPipe:
    """A minimal CDP client for a Chromium started with ``--remote-debugging-pipe``."""

    def __init__(self, binary: str, profile_dir: Path, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict[str, Any]] = []
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire_fds() -> None:  # runs in the child between fork and exec
            high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.process = subprocess.Popen(
            chromium_args(binary, profile_dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            close_fds=False,
            preexec_fn=wire_fds,
        )
        os.close(to_child_r)
        os.close(from_child_w)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send a command and return its ``result``; events seen meanwhile go to :attr:`events`."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_child, data) :]
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read(deadline - time.monotonic())
            if reply is None:
                raise CdpError(f"{method}: no answer from Chromium within {timeout or self.timeout:.0f} s")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def pump(self, seconds: float) -> list[dict[str, Any]]:
        """Collect events for up to ``seconds``; returns (and drains) all collected events."""
        deadline = time.monotonic() + seconds
        while (message := self._read(deadline - time.monotonic())) is not None:
            if "method" in message:
                self.events.append(message)
        events, self.events = self.events, []
        return events

    def _read(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None when none arrives within ``timeout`` seconds."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                return None
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise CdpError(f"Chromium exited (status {self.process.poll()}): {self._stderr_tail()}")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def _stderr_tail(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        """Ask the browser to quit, then make sure it is gone."""
        try:
            if self.process.poll() is None:
                self.send("Browser.close", timeout=5)
        except (CdpError, OSError):
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.process.stderr:
            self.process.stderr.close()


#: Waits for the page's images (lazy ones forced eager) and lists those that did not load.
BROKEN_IMAGES_JS = """
(async () => {
  const imgs = Array.from(document.images);
  imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => {
    i.addEventListener('load', r); i.addEventListener('error', r); setTimeout(r, 5000); })));
  return imgs.filter(i => !i.complete || i.naturalWidth === 0)
             .map(i => ({src: i.getAttribute('src') || '', url: i.currentSrc || i.src}));
})()
"""


#: Tables wider than the page's content column that no scroll box holds: a table must fit, or sit in
#: an element (itself no wider than the column) that scrolls horizontally (``overflow-x: auto|scroll``).
WIDE_TABLES_JS = r"""
(() => {
  const selectors = ['article.bd-article', '.bd-article-container', '[role=main]', 'main', 'article', 'body'];
  const column = selectors.map(s => document.querySelector(s)).find(e => e) || document.body;
  const limit = column.getBoundingClientRect().right + 1;
  const found = [];
  for (const table of document.querySelectorAll('table')) {
    const box = table.getBoundingClientRect();
    if (box.width === 0 || Math.max(box.right, box.left + table.scrollWidth) <= limit) continue;
    let scroller = null;
    for (let el = table; el && el !== column && el !== document.body; el = el.parentElement) {
      const overflow = getComputedStyle(el).overflowX;
      if (overflow === 'auto' || overflow === 'scroll') { scroller = el; break; }
    }
    if (scroller && scroller.getBoundingClientRect().right <= limit) continue;
    const head = table.querySelector('th, td');
    found.push({width: Math.round(Math.max(box.width, table.scrollWidth)),
                column: Math.round(column.getBoundingClientRect().width),
                first: head ? head.textContent.replace(/\s+/g, ' ').trim().slice(0, 40) : '',
                scroller: scroller ? 'its scroll box is wider than the column' : 'no scroll box'});
  }
  return found;
})()
"""


#: Every slice viewer of the page (``[data-nnsam2-viewer]``) driven as a reader would: the slider moved (value set,
#: ``input`` event), then the arrow keys pressed on the viewer. Each step must show exactly one frame, the one asked
#: for, with its image decoded and a slice label that changed. Returns per viewer its title, slices and problems.
VIEWERS_JS = r"""
(async () => {
  const tick = () => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
  const out = [];
  for (const viewer of document.querySelectorAll('[data-nnsam2-viewer]')) {
    const title = (viewer.querySelector('.nnsam2-title') || viewer).textContent.trim().slice(0, 80);
    const frames = Array.from(viewer.querySelectorAll('.nnsam2-frame'));
    const slider = viewer.querySelector('input[type=range]');
    const label = viewer.querySelector('.nnsam2-where');
    const problems = [];
    let declared = null;
    try { declared = JSON.parse(viewer.getAttribute('data-nnsam2-viewer')).slices; } catch (e) {}
    const visible = (f) => getComputedStyle(f).display !== 'none'
      && Array.from(f.querySelectorAll('img')).some(i => i.getBoundingClientRect().height > 0);
    const shown = () => frames.map((f, i) => (visible(f) ? i : -1)).filter(i => i >= 0);
    const loaded = async (k) => {
      const imgs = Array.from(frames[k].querySelectorAll('img'));
      await Promise.all(imgs.map(i => i.decode().catch(() => null)));
      return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
    };
    const expect = async (k, how, before) => {
      await tick();
      const now = shown();
      if (now.length !== 1 || now[0] !== k) {
        problems.push(`${how}: frame ${k} should show, frames [${now}] do`);
      } else if (!(await loaded(k))) {
        problems.push(`${how}: the image of frame ${k} did not load`);
      } else if (!label || label.textContent === before) {
        problems.push(`${how}: the slice label did not change (${label ? label.textContent : 'no label'})`);
      }
    };
    if (!frames.length || !slider) {
      problems.push(`no ${frames.length ? 'slider' : 'frames'}`);
    } else if (declared !== null && declared !== frames.length) {
      problems.push(`${frames.length} frames for the ${declared} slices it declares`);
    } else {
      const first = shown();
      if (first.length !== 1) problems.push(`frames [${first}] show before any move (one should)`);
      else if (!(await loaded(first[0]))) problems.push(`the image of frame ${first[0]} did not load`);
      if (frames.length > 1 && !problems.length) {
        const target = first[0] === frames.length - 1 ? 0 : frames.length - 1;
        let before = label ? label.textContent : '';
        slider.value = String(target);
        slider.dispatchEvent(new Event('input', {bubbles: true}));
        await expect(target, `slider moved to ${target}`, before);
        if (!problems.length) {
          const step = target === 0 ? 1 : -1;
          before = label ? label.textContent : '';
          viewer.focus();
          viewer.dispatchEvent(new KeyboardEvent('keydown', {key: step > 0 ? 'ArrowDown' : 'ArrowUp', bubbles: true}));
          await expect(target + step, `arrow key ${step > 0 ? 'down' : 'up'}`, before);
        }
      }
    }
    out.push({title: title, slices: frames.length, problems: problems});
  }
  return out;
})()
"""


def check_viewers(
    cdp: CdpPipe, session: str, html_root: Path, page: str, timeout: float = 20.0
) -> tuple[list[Problem], list[str]]:
    """Drive every slice viewer of the loaded page (:data:`VIEWERS_JS`): its problems (a JavaScript error thrown
    meanwhile included), and ``page: title (n slices)`` of each viewer that followed the slider and the arrow keys."""
    answer = cdp.send(
        "Runtime.evaluate",
        {"expression": VIEWERS_JS, "awaitPromise": True, "returnByValue": True},
        session=session,
        timeout=timeout,
    )
    problems, working = [], []
    for found in answer.get("result", {}).get("value") or []:
        if found["problems"]:
            problems += [Problem("viewer", page, message, target=found["title"]) for message in found["problems"]]
        else:
            working.append(f"{page}: {found['title']} ({found['slices']} slices)")
    problems += events_to_problems(page, cdp.pump(0), html_root.resolve().as_uri() + "/")
    return problems, working


def _shorten(url: str, root_url: str) -> str:
    """A file:// URL inside the book as a book-relative path, other URLs unchanged."""
    return url[len(root_url) :] if url.startswith(root_url) else url


def events_to_problems(page: str, events: list[dict[str, Any]], root_url: str) -> list[Problem]:
    """Turn CDP events of one page load into problems (JS exceptions, failed loads, console errors)."""
    problems: list[Problem] = []
    urls: dict[str, str] = {}
    failed: set[str] = set()
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = (details.get("exception") or {}).get("description") or details.get("text", "")
            where = f"{_shorten(details.get('url', ''), root_url)}:{details.get('lineNumber', 0) + 1}"
            problems.append(Problem("js-error", page, text.splitlines()[0] if text else "exception", target=where))
        elif method == "Network.loadingFailed":
            url = urls.get(params["requestId"], "?")
            reason = params.get("blockedReason") or params.get("errorText", "")
            if url in failed or params.get("canceled"):
                continue
            failed.add(url)
            if url.startswith("file:"):
                problems.append(
                    Problem("resource", page, f"failed to load from disk ({reason})", target=_shorten(url, root_url))
                )
            else:
                problems.append(
                    Problem(
                        "external-resource",
                        page,
                        f"external resource not loaded ({reason})",
                        target=url,
                        severity="warning",
                    )
                )
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
            problems.append(Problem("console-error", page, text[:300], severity="warning"))
        elif method == "Log.entryAdded":
            entry = params["entry"]
            if entry.get("level") == "error" and entry.get("source") not in ("network", "javascript", "console-api"):
                problems.append(
                    Problem(
                        "browser-error",
                        page,
                        entry.get("text", "")[:300],
                        target=_shorten(entry.get("url", ""), root_url),
                    )
                )
    return problems


def _wait_until_settled(cdp: CdpPipe, timeout: float, quiet: float = 0.3) -> list[dict[str, Any]]:
    """Events until the main frame stopped loading and nothing happened for ``quiet`` seconds."""
    events: list[dict[str, Any]] = []
    loading, loaded = True, False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = cdp.pump(quiet)
        for event in batch:
            method = event["method"]
            if method == "Page.loadEventFired":
                loaded = True
            elif method == "Page.frameStartedLoading":
                loading = True
            elif method == "Page.frameStoppedLoading":
                loading = False
        events += batch
        if loaded and not loading and not batch:
            return events
    log.warning("page did not settle within %.0f s", timeout)
    return events


def _screenshot(cdp: CdpPipe, session: str, path: Path, width: int, height: int, max_height: int = 16000) -> Path:
    """Save a full-page PNG screenshot (capped at ``max_height`` CSS pixels).

    The viewport is grown to the page height for the capture and restored afterwards:
    capturing "beyond the viewport" instead re-lays out sticky sidebars wrongly.
    """
    metrics = cdp.send("Page.getLayoutMetrics", session=session)
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    full = int(min(max(size["height"], height), max_height))
    override = {"width": width, "height": full, "deviceScaleFactor": 1, "mobile": False}
    cdp.send("Emulation.setDeviceMetricsOverride", override, session=session)
    try:
        cdp.pump(0.3)  # let the page re-lay out at the new viewport height
        shot = cdp.send("Page.captureScreenshot", {"format": "png"}, session=session, timeout=60)
    finally:
        cdp.send("Emulation.setDeviceMetricsOverride", {**override, "height": height}, session=session)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def _open_tab(cdp: CdpPipe, width: int, height: int) -> str:
    """Create a tab, attach to it and enable the domains the check listens to; returns the session id."""
    target = cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Network", "Log"):
        cdp.send(f"{domain}.enable", session=session)
    cdp.send("Network.setBlockedURLs", {"urls": ["http://*", "https://*", "ws://*", "wss://*"]}, session=session)
    cdp.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    cdp.pump(0.05)
    return session


def check_page(cdp: CdpPipe, session: str, html_root: Path, page: str, timeout: float = 20.0) -> list[Problem]:
    """Load one page from disk in the tab ``session`` and return its problems."""
    root_url = html_root.resolve().as_uri() + "/"
    cdp.pump(0)
    result = cdp.send("Page.navigate", {"url": root_url + page}, session=session)
    if result.get("errorText"):
        return [Problem("resource", page, f"page did not open ({result['errorText']})", target=page)]
    problems = events_to_problems(page, _wait_until_settled(cdp, timeout), root_url)
    answer = cdp.send(
        "Runtime.evaluate",
        {"expression": BROKEN_IMAGES_JS, "awaitPromise": True, "returnByValue": True},
        session=session,
        timeout=timeout,
    )
    for image in answer.get("result", {}).get("value") or []:
        problems.append(
            Problem(
                "image",
                page,
                "image did not load (naturalWidth == 0)",
                "src",
                image["src"] or _shorten(image["url"], root_url),
            )
        )
    wide = cdp.send("Runtime.evaluate", {"expression": WIDE_TABLES_JS, "returnByValue": True}, session=session)
    for table in wide.get("result", {}).get("value") or []:
        problems.append(
            Problem(
                "wide-table",
                page,
                f"a table {table['width']} px wide is cut off or widens the page: the content column is"
                f" {table['column']} px and the table has {table['scroller']} (first cell: {table['first']!r})",
            )
        )
    problems += events_to_problems(page, cdp.pump(0), root_url)
    return problems


def browse(
    html_root: Path,
    out_dir: Path,
    pages: list[str] | None = None,
    screenshots: dict[str, str] | None = None,
    chromium: str | None = None,
    page_timeout: float = 20.0,
    width: int = 1280,
    height: int = 900,
    allow: Iterable[str] = (),
) -> BrowseReport:
    """Open the book's pages in headless Chromium from disk and report what failed.

    Fails (error problems) on images that did not load, JavaScript exceptions, resources
    that failed to load from disk, tables wider than the content column that no scroll box
    holds (:data:`WIDE_TABLES_JS`) and slice viewers that do not follow their slider or the arrow
    keys (:data:`VIEWERS_JS`; those that do are listed in ``report.viewers``); external requests
    are blocked and reported as warnings.
    ``pages`` defaults to :func:`find_pages`; ``screenshots`` maps book-relative pages to PNG
    file names written into ``out_dir`` (default :data:`DEFAULT_SCREENSHOTS`, those that exist).
    Errors matching an ``allow`` regex (e.g. a known harmless JS error) become warnings.
    """
    started = time.monotonic()
    html_root, out_dir = Path(html_root).resolve(), Path(out_dir)
    if not html_root.is_dir():
        raise FileNotFoundError(f"{html_root}: not a folder (build the book first)")
    binary = find_chromium(chromium)
    if binary is None:
        raise FileNotFoundError("Chromium not found: install it (apt-get install chromium) or set NNSAM2_CHROMIUM")
    pages = find_pages(html_root) if pages is None else list(pages)
    if screenshots is None:
        screenshots = {page: name for page, name in DEFAULT_SCREENSHOTS.items() if (html_root / page).is_file()}
    report = BrowseReport(pages=pages)
    with tempfile.TemporaryDirectory(prefix="nnsam2-chromium-") as profile:
        cdp = CdpPipe(binary, Path(profile))
        try:
            log.info("browser: %s", cdp.send("Browser.getVersion").get("product"))
            session = _open_tab(cdp, width, height)
            for page in pages:
                page_started = time.monotonic()
                report.problems += check_page(cdp, session, html_root, page, page_timeout)
                viewer_problems, working = check_viewers(cdp, session, html_root, page, page_timeout)
                report.problems += viewer_problems
                report.viewers += working
                if page in screenshots:
                    report.screenshots[page] = _screenshot(cdp, session, out_dir / screenshots[page], width, height)
                log.info("%s checked in %.1f s", page, time.monotonic() - page_started)
        finally:
            cdp.close()
    missing = sorted(set(screenshots) - set(report.screenshots))
    report.problems += [Problem("screenshot", page, "page was not visited, no screenshot taken") for page in missing]
    report.problems = downgrade(report.problems, allow)
    report.seconds = time.monotonic() - started
    log.info(
        "browsed %d pages in %.1f s: %d errors, %d warnings",
        len(pages),
        report.seconds,
        len(report.errors),
        len(report.warnings),
    )
    return report


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def _print_problems(title: str, problems: list[Problem]) -> None:
    print(f"{title}: {len(errors(problems))} error(s), {len(warnings(problems))} warning(s)")
    for problem in sorted(problems, key=lambda p: (p.severity != "error", p.page, p.kind)):
        print(f"  {problem}")


def main(argv: list[str] | None = None) -> int:
    """``python -m bookcheck HTML_ROOT --out DIR``: exit 1 when a check fails."""
    parser = argparse.ArgumentParser(prog="python -m bookcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("html_root", type=Path, help="the built book, e.g. book/_build/html")
    parser.add_argument("--out", type=Path, default=Path("bookcheck"), help="folder for the screenshots")
    parser.add_argument("--no-browser", action="store_true", help="only the static link check")
    parser.add_argument("--chromium", help="Chromium binary (default: $NNSAM2_CHROMIUM or /usr/bin/chromium)")
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="REGEX",
        help="downgrade errors whose text matches REGEX to warnings (repeatable)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="do not allow the known harmless toolchain errors (KNOWN_SPHINX_ISSUES)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    allow = args.allow + ([] if args.strict else list(KNOWN_SPHINX_ISSUES))
    if not args.html_root.is_dir():
        print(f"{args.html_root}: not a folder (build the book first)", file=sys.stderr)
        return 2
    links = check_links(args.html_root, allow=allow)
    _print_problems("links", links)
    content = check_content(args.html_root, allow=allow)
    _print_problems("content", content)
    failed = bool(errors(links)) or bool(errors(content))
    if not args.no_browser:
        report = browse(args.html_root, args.out, chromium=args.chromium, allow=allow)
        _print_problems(f"browser ({len(report.pages)} pages, {report.seconds:.1f} s)", report.problems)
        for page, path in report.screenshots.items():
            print(f"  screenshot of {page}: {path}")
        for viewer in report.viewers:
            print(f"  slice viewer follows its slider and arrow keys: {viewer}")
        failed = failed or not report.ok
    print("FAILED" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
