"""Offline book checks: static link check and a real headless Chromium on hand-made HTML trees."""

from __future__ import annotations

import base64
import os
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
    assert report.pages == ["index.html", "intro.html", "sub/index.html", "sub/page two.html"]
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
    report = browse(html, tmp_path, allow=bookcheck.KNOWN_SPHINX_ISSUES)
    assert report.ok, "\n".join(map(str, report.errors))
    assert set(report.screenshots) == set(bookcheck.DEFAULT_SCREENSHOTS)
    assert report.seconds < 60


def test_content_check_passes_a_clean_page_and_names_each_problem(tmp_path: Path):
    sidebar = "<div class='bd-sidebar-primary'><a href='a.html'>Stage 0: ct</a><a href='b.html'>Stage 0: mri</a></div>"
    out = (
        "<div class='cell_output docutils container'>"
        "<div class='output stream highlight-myst-ansi'><pre>{}</pre></div></div>"
    )
    clean = page(
        sidebar
        + "<p>Files under work/demo/tables.</p>"
        + out.format("3 lines\nof\nlog")
        + "<a href='../tables/dsc.csv'>dsc.csv</a><a href='../tables/dsc.csv'>dsc.csv</a>"
    )
    bad = page(
        sidebar.replace("Stage 0: mri", "Stage 0: ct")
        + out.format("\n".join(f"epoch {i}" for i in range(25)))
        + out.format("/work/main/.venv/lib/python3.11/site-packages/x.py:3: FutureWarning: soon")
        + out.format("Traceback (most recent call last):\n  boom")
        + "<p>see /root/project/work/demo</p>"
        + "<a href='../tables/a.csv'>dsc_summary.csv</a><a href='../tables/a.csv'>dsc.csv</a>"
    )
    root = write_tree(tmp_path / "book", {"clean.html": clean, "bad.html": bad})
    assert bookcheck.check_content(root, ["clean.html"]) == []
    found = {p.kind: p.message for p in bookcheck.check_content(root, ["bad.html"])}
    assert set(found) == {
        "warning-shown",
        "traceback-shown",
        "long-output",
        "machine-path",
        "sidebar-duplicate",
        "csv-link-duplicate",
    }
    assert "25 lines" in found["long-output"] and "'Stage 0: ct'" in found["sidebar-duplicate"]
    assert "FutureWarning" in found["warning-shown"] and "/root/project" in found["machine-path"]
