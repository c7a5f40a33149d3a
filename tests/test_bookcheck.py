"""Offline book checks: static link check and a real headless Chromium on hand-made HTML trees."""

from __future__ import annotations

import base64
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import bookcheck
import pytest
from bookcheck import Problem, browse, check_links, errors, warnings

CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing: install Debian's chromium to run the browser checks"
)


def png_bytes(width: int = 4, height: int = 3) -> bytes:
    """A valid grey PNG built with the standard library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + b"\x80" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def wide_table(columns: int = 80) -> str:
    """A table far wider than a 1280 px page: ``columns`` cells that do not wrap."""
    return "<table><tr>" + "<th>column&nbsp;name&nbsp;1</th>" * columns + "</tr></table>"


def page(body: str, head: str = "") -> str:
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'>{head}</head><body>{body}</body></html>"


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


@pytest.fixture
def good_tree(tmp_path: Path) -> Path:
    """A small book with working links, fragments, images, CSS and JS."""
    return write_tree(
        tmp_path / "good",
        {
            "index.html": page(
                "<a href='intro.html'>intro</a>", "<meta http-equiv='refresh' content='0; url=intro.html'>"
            ),
            "intro.html": page(
                "<h1 id='top'>Intro</h1><a href='#top'>top</a> <a href='sub/'>sub</a> "
                "<a href='sub/page%20two.html#sec-2'>two</a> <a href='mailto:a@b.c'>mail</a> "
                "<a href='javascript:void(0)'>js</a> <img src='data:image/png;base64,"
                + base64.b64encode(png_bytes()).decode()
                + "' alt=''> "
                "<a href='https://example.org/paper'>paper</a> <img src='_images/fig.png' alt='fig'>"
                "<p id='ok'></p><script src='_static/app.js'></script>",
                "<link rel='stylesheet' href='_static/style.css?v=1'>",
            ),
            "sub/index.html": page("<a href='../intro.html#top'>back</a><a name='legacy'></a>"),
            "sub/page two.html": page(
                "<h2 id='sec-2'>Two</h2><a href='index.html#legacy'>legacy</a>"
                "<img srcset='../_images/fig.png 1x, ../_images/fig.png 2x' src='../_images/fig.png'>"
            ),
            "_images/fig.png": png_bytes(),
            "_static/style.css": "body { color: #222; }",
            "_static/app.js": "document.getElementById('ok').textContent = 'ran';",
            "_static/template.html": "<a href=\"{{ pathto('x') }}\">template, not a page</a>",
            "sub/wide.html": page(
                "<div style='overflow-x: auto'>" + wide_table() + "</div>"
                "<table style='display: block; overflow-x: auto'><tr>"
                + "<td>cell&nbsp;value&nbsp;42</td>" * 80
                + "</tr></table>"
                + "<table><tr><td>narrow</td></tr></table>"
            ),
        },
    )


@pytest.fixture
def bad_tree(tmp_path: Path) -> Path:
    """A small book with one of each problem the checks must catch."""
    return write_tree(
        tmp_path / "bad",
        {
            "intro.html": page(
                "<h1 id='top'>Intro</h1><a href='missing.html'>broken</a> <a href='other.html#nowhere'>frag</a> "
                "<a href='#gone'>same-page</a> <img src='_images/missing.png' alt='missing'> "
                "<a href='/etc/passwd'>absolute</a> <a href='../outside.html'>outside</a>"
                "<script>undefinedFunctionCall();</script><script src='_static/missing.js'></script>",
                "<link rel='stylesheet' href='_static/missing.css'>",
            ),
            "other.html": page("<h1 id='here'>Other</h1><img src='broken.png' alt='corrupt'>"),
            "broken.png": b"this is not a png",
        },
    )


def kinds(problems: list[Problem]) -> set[tuple[str, str]]:
    return {(p.kind, p.target) for p in problems}


# -- static link check ----------------------------------------------------------------------


def test_links_good_tree_has_no_errors(good_tree: Path) -> None:
    problems = check_links(good_tree)
    assert errors(problems) == []
    assert [(p.kind, p.target) for p in warnings(problems)] == [("external-link", "https://example.org/paper")]


def test_links_bad_tree_reports_each_problem(bad_tree: Path) -> None:
    problems = check_links(bad_tree)
    found = {(p.kind, p.page, p.attribute, p.target) for p in errors(problems)}
    assert ("broken-link", "intro.html", "href", "missing.html") in found
    assert ("missing-fragment", "intro.html", "href", "other.html#nowhere") in found
    assert ("missing-fragment", "intro.html", "href", "#gone") in found
    assert ("broken-link", "intro.html", "src", "_images/missing.png") in found
    assert ("broken-link", "intro.html", "src", "_static/missing.js") in found
    assert ("broken-link", "intro.html", "href", "_static/missing.css") in found
    assert ("broken-link", "intro.html", "href", "/etc/passwd") in found
    assert ("broken-link", "intro.html", "href", "../outside.html") in found
    assert len(found) == 8
    messages = {p.target: str(p) for p in problems}
    assert "target not found: missing.html" in messages["missing.html"]
    assert "no id or name 'nowhere' in other.html" in messages["other.html#nowhere"]
    assert "no id or name 'gone' in this page" in messages["#gone"]


def test_allow_downgrades_matching_errors(bad_tree: Path) -> None:
    problems = check_links(bad_tree, allow=[r"missing\.css"])
    allowed = [p for p in problems if p.target == "_static/missing.css"]
    assert [p.severity for p in allowed] == ["warning"] and "(allowed)" in allowed[0].message
    assert len(errors(problems)) == 7


# -- real headless Chromium -----------------------------------------------------------------


@needs_chromium
def test_browse_good_tree_is_clean_and_takes_screenshots(good_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "shots"
    report = browse(good_tree, out, screenshots={"intro.html": "intro.png", "sub/page two.html": "two.png"})
    assert report.problems == [], [str(p) for p in report.problems]
    assert report.ok
    assert report.pages == ["index.html", "intro.html", "sub/index.html", "sub/page two.html", "sub/wide.html"]
    for name in ("intro.png", "two.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert report.seconds < 60


@needs_chromium
def test_browse_bad_tree_reports_image_js_and_resource_failures(bad_tree: Path, tmp_path: Path) -> None:
    report = browse(bad_tree, tmp_path / "shots", screenshots={})
    found = kinds(report.errors)
    assert ("image", "_images/missing.png") in found
    assert ("image", "broken.png") in found, "an image file that exists but does not decode must be caught"
    assert ("resource", "_images/missing.png") in found
    assert ("resource", "_static/missing.js") in found
    assert ("resource", "_static/missing.css") in found
    js = [p for p in report.errors if p.kind == "js-error"]
    assert len(js) == 1 and js[0].page == "intro.html"
    assert "undefinedFunctionCall is not defined" in js[0].message
    assert not report.ok


@needs_chromium
def test_browse_blocks_external_requests_as_warnings(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path / "ext", {"intro.html": page("<p>x</p>", "<script src='https://cdn.example.org/lib.js'></script>")}
    )
    report = browse(root, tmp_path / "shots", screenshots={})
    assert report.errors == []
    assert kinds(report.warnings) == {("external-resource", "https://cdn.example.org/lib.js")}


@needs_chromium
def test_cli_exit_status(good_tree: Path, bad_tree: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bookcheck"]
    here = Path(__file__).resolve().parent  # bookcheck is a test helper: it lives in tests/
    good = subprocess.run(
        command + [str(good_tree), "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=here
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.strip().endswith("OK")
    bad = subprocess.run(command + [str(bad_tree), "--no-browser"], capture_output=True, text=True, cwd=here)
    assert bad.returncode == 1
    assert "ERROR broken-link: intro.html [href='missing.html']" in bad.stdout


# -- the real book --------------------------------------------------------------------------


@needs_chromium
@pytest.mark.skipif(
    not os.environ.get("NNSAM2_BOOK_HTML"), reason="set NNSAM2_BOOK_HTML to a built book (book/_build/html) to check it"
)
def test_real_book(tmp_path: Path) -> None:
    html = Path(os.environ["NNSAM2_BOOK_HTML"])
    links = check_links(html)
    assert errors(links) == [], "\n".join(map(str, errors(links)))
    content = bookcheck.check_content(html)
    assert errors(content) == [], "\n".join(map(str, errors(content)))
    report = browse(html, tmp_path, allow=bookcheck.KNOWN_SPHINX_ISSUES)
    assert report.ok, "\n".join(map(str, report.errors))
    assert set(report.screenshots) == set(bookcheck.DEFAULT_SCREENSHOTS)
    # the teaching page's slice viewer, inline and as its own file, followed the slider and the arrow keys
    assert any(v.startswith("generated/07_teaching.html") for v in report.viewers), report.viewers
    assert any(v.startswith("_downloads/") for v in report.viewers), report.viewers
    assert report.seconds < 60


@needs_chromium
def test_browse_reports_a_table_wider_than_the_page_without_a_scroll_box(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path / "tables",
        {
            "no_box.html": page("<p>text</p>" + wide_table()),
            "cut_off.html": page("<div style='overflow: hidden'>" + wide_table() + "</div>"),
            "box_too_wide.html": page("<div style='overflow-x: auto; width: 5000px'>" + wide_table() + "</div>"),
            "scrolls.html": page("<div style='overflow-x: auto'>" + wide_table() + "</div>"),
            "fits.html": page(wide_table(3)),
        },
    )
    report = browse(root, tmp_path / "shots", screenshots={})
    wide = {p.page: p.message for p in report.errors if p.kind == "wide-table"}
    assert set(wide) == {"no_box.html", "cut_off.html", "box_too_wide.html"}, [str(p) for p in report.problems]
    assert "no scroll box" in wide["no_box.html"] and "'column name 1'" in wide["no_box.html"]
    assert "scroll box is wider" in wide["box_too_wide.html"]
    assert [p for p in report.errors if p.kind != "wide-table"] == []


# -- slice viewers: moved in the browser ------------------------------------------------------


def viewer_page(slices: int = 4) -> str:
    """A page with one slice viewer as nnsam2_utils.report.viewer writes it (tiny phantom slices)."""
    import numpy as np

    from nnsam2_utils.report.viewer import Layer, slice_positions, standalone_html, viewer_html

    image = np.arange(slices * 8 * 8, dtype=float).reshape(slices, 8, 8)
    labels = np.zeros(image.shape, np.uint8)
    labels[:, 2:6, 1:4], labels[:, 2:6, 4:7] = 1, 2
    positions = slice_positions(slices, {"L3L4": 0.0, "L4L5": None, "L5S1": slices - 1.0})
    return standalone_html(viewer_html(image, [Layer("expert", "expert label", labels)], "test scan", positions), "t")


#: Ways a viewer breaks (page name -> (text replaced, its replacement, words of the expected problem)).
BROKEN_VIEWERS = {
    "no_script.html": ("document.querySelectorAll('[data-nnsam2-viewer]", "[].slice.call(([]", "should show"),
    "off_by_one.html": ("f.hidden = (i !== k);", "f.hidden = (i !== Math.max(0, k - 1));", "frame 3 should show"),
    "no_keys.html": ("ArrowUp: -1", "ArrowUpX: -1", "arrow key up: frame 2 should show"),
    "frozen_label.html": ("where.textContent =", "void", "slice label did not change"),
    "broken_frame.html": ("", "", "image of frame 3 did not load"),
}


@needs_chromium
def test_browse_moves_each_slice_viewer_and_fails_a_broken_one(tmp_path: Path) -> None:
    good = viewer_page()
    pages = {"good.html": good}
    for name, (old, new, _) in BROKEN_VIEWERS.items():
        assert old in good, name
        pages[name] = good.replace(old, new)
    # the broken frame: the last frame's image is not a PNG
    pages["broken_frame.html"] = re.sub(
        r'(alt="slice 3" src=")[^"]+"', r'\1data:image/png;base64,AAAA"', pages["broken_frame.html"]
    )
    report = browse(write_tree(tmp_path / "viewers", pages), tmp_path / "shots", screenshots={})
    found = {p.page: p.message for p in report.errors if p.kind == "viewer"}
    assert report.viewers == ["good.html: test scan (4 slices)"], [str(p) for p in report.problems]
    assert set(found) == set(BROKEN_VIEWERS), [str(p) for p in report.problems]
    for name, (_, _, words) in BROKEN_VIEWERS.items():
        assert words in found[name], (name, found[name])
    assert not [p for p in report.errors if p.page == "good.html"]


# -- content check: what a reader must not see -----------------------------------------------

SIDEBAR = "<div class='bd-sidebar-primary'><a href='a.html'>Stage 0: ct</a><a href='b.html'>Stage 0: mri</a></div>"


def cell(*outputs: str) -> str:
    """An executed notebook cell as MyST-NB renders it, with the given output areas."""
    return (
        "<div class='cell docutils container'><div class='cell_input docutils container'><pre>run()</pre></div>"
        "<div class='cell_output docutils container'>" + "".join(outputs) + "</div></div>"
    )


def output(text: str, kind: str = "stream") -> str:
    """One output area: ``stream`` (merged stdout), ``stderr``, ``text_plain`` or ``traceback``."""
    area = f"<div class='output {kind} highlight-myst-ansi notranslate'>"
    return area + f"<div class='highlight'><pre>{text}</pre></div></div>"


def lines(n: int, prefix: str = "epoch") -> str:
    return "\n".join(f"{prefix} {i}" for i in range(n))


#: A page with everything the content check must let through.
CLEAN_BODY = (
    SIDEBAR + "<h1>Stage 0: ct</h1><p>Files under work/demo/tables; the code at https://github.com/work/nnsam2;"
    " ~/tmp is not shown as a path.</p><img src='x.png' alt=''/><br/>"
    + cell(output(lines(12)), output(lines(8, "step"), "stderr"))  # 20 lines in one cell: allowed
    + cell(output(lines(15)))  # another cell: counted on its own
    + cell(output("0.923", "text_plain"))
    + "<p>Download as CSV: <a class='reference download internal' href='tables/dsc_summary.csv'>dsc_summary.csv</a>"
    " (this table) · <a href='tables/dsc.csv'>dsc.csv</a> (the data it summarises)</p>"
    "<p>Warnings are silenced at their cause; a ValueError is explained in the text.</p>"
)

#: One defect each: (kind, HTML added to the clean page, text the message must contain).
DEFECTS = {
    "python-warning": (
        "warning-shown",
        cell(output("x/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found", "stderr")),
        "TqdmWarning:",
    ),
    "warning-repr": ("warning-shown", cell(output("[FutureWarning('soon')]", "text_plain")), "FutureWarning("),
    "traceback-in-stream": (
        "traceback-shown",
        cell(output("Traceback (most recent call last):\n  File 'x.py', line 1\nValueError: boom", "stderr")),
        "Traceback (most recent call last)",
    ),
    "traceback-output": (
        "traceback-shown",
        cell(output("KeyError                 Traceback (most recent call last)\nKeyError: 'dsc'", "traceback")),
        "'KeyError:'",
    ),
    "long-log": ("long-output", cell(output(lines(25))), "a cell shows 25 lines of output"),
    "long-log-split": (
        "long-output",
        cell(output(lines(12)), output(lines(9, "100%|██████████|"), "stderr")),
        "a cell shows 21 lines of output",
    ),
    "machine-path": ("machine-path", "<p>written to /root/project/work/demo/tables</p>", "'/root/project"),
    "tmp-path": ("machine-path", cell(output("saved /tmp/tmpab12/stage0.nii.gz", "text_plain")), "'/tmp/tmpab12"),
    "sidebar-duplicate": (
        "sidebar-duplicate",
        "<div class='bd-sidebar-primary'><a href='c.html'>Stage 0: ct</a></div>",
        "'Stage 0: ct'",
    ),
    "csv-same-href": (
        "csv-link-duplicate",
        "<p>Download as CSV: <a href='tables/x.csv'>x.csv</a> (this table) · <a href='tables/x.csv'>x.csv</a></p>",
        "2 links ('x.csv', 'x.csv') point to the same file",
    ),
    "csv-same-file": (
        "csv-link-duplicate",
        "<p>the same data as <a href='./tables/../tables/y.csv'>y</a> <a href='tables/y.csv'>y.csv</a></p>",
        "2 links ('y', 'y.csv') point to the same file",
    ),
}


def test_content_check_passes_a_clean_page(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "book", {"generated/clean.html": page(CLEAN_BODY)})
    assert bookcheck.check_content(root) == []


def test_content_check_passes_the_good_tree(good_tree: Path) -> None:
    assert bookcheck.check_content(good_tree) == []


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_content_check_names_the_page_and_the_defect(tmp_path: Path, defect: str) -> None:
    kind, html, text = DEFECTS[defect]
    root = write_tree(tmp_path / "book", {f"generated/{defect}.html": page(CLEAN_BODY + html)})
    problems = bookcheck.check_content(root)
    assert [(p.kind, p.page, p.severity) for p in problems] == [(kind, f"generated/{defect}.html", "error")], problems
    assert text in str(problems[0])


def test_content_check_finds_this_machines_own_folders(tmp_path: Path) -> None:
    """The repository root, work, home and temporary folders, wherever they are, count as machine paths."""
    defaults = bookcheck.default_machine_paths()
    assert str(Path(__file__).resolve().parents[1]) in defaults and str(Path.home()) in defaults
    body = CLEAN_BODY + "<p>read from /srv/build/nnsam2/work/demo/tables/dsc.csv</p>"
    root = write_tree(tmp_path / "book", {"p.html": page(body)})
    assert bookcheck.check_content(root, machine_paths=[]) == []
    found = bookcheck.check_content(root, machine_paths=["/srv/build/nnsam2"])
    assert [p.kind for p in found] == ["machine-path"] and "/srv/build/nnsam2/work/demo/tables/dsc.csv" in found[
        0
    ].message
    assert bookcheck.check_content(root, machine_paths=["/srv/build/nnsam"]) == []  # a whole folder name only


def test_cli_fails_on_a_content_problem(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "book", {"p.html": page(CLEAN_BODY + DEFECTS["long-log"][1])})
    here = Path(__file__).resolve().parent
    result = subprocess.run(
        [sys.executable, "-m", "bookcheck", str(root), "--no-browser"], capture_output=True, text=True, cwd=here
    )
    assert result.returncode == 1
    assert "ERROR long-output: p.html: a cell shows 25 lines of output" in result.stdout
