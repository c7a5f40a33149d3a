"""The package's layout keeps its rules: imports run one way, no cycles, no test-only module, ids named once."""

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnsam2_utils"
LOWER_LAYERS = ("prepare", "propagate", "refine", "report", "steps", "baselines", "workflow", "evaluate")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every nnsam2_utils module a file imports (top level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnsam2_utils"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nnsam2_utils"))
    return found


def imports_of_text(code: str) -> set[str]:
    """Like :func:`imports_of`, for notebook code (IPython lines that are not Python are dropped)."""
    lines = [line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))]
    found = set()
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnsam2_utils"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}


def test_the_data_layer_imports_nothing_from_the_phases_above_it():
    for name, path in modules().items():
        if name.startswith("nnsam2_utils.data"):
            upward = [m for m in imports_of(path) if m.split(".")[1] in LOWER_LAYERS]
            assert not upward, f"{path.relative_to(ROOT)} imports {upward}"


def test_evaluation_knows_no_model():
    for name, path in modules().items():
        if name.startswith("nnsam2_utils.evaluate"):
            models = [m for m in imports_of(path) if m.split(".")[1] in ("propagate", "refine", "baselines", "steps")]
            assert not models or name.endswith("repeatability"), f"{path.relative_to(ROOT)} imports {models}"


def test_no_import_cycle_between_modules():
    known = modules()
    graph = {name: {m for m in imports_of(path) if m in known and m != name} for name, path in known.items()}
    # packages' __init__ re-exports are edges too; a cycle is a path back to the start
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1 and not nxt.endswith(("nnsam2_utils.steps", "nnsam2_utils.propagate")):
                raise AssertionError("import cycle: " + " -> ".join(trail + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_every_module_serves_the_product():
    """No module of the package is imported only by the tests (those live in tests/)."""
    known = modules()
    used: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        used |= {m for m in imports_of(path) if m != module_name(path)}
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        code = "\n".join(
            "".join(c["source"])
            for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
            if c["cell_type"] == "code"
        )
        used |= {m for m in imports_of_text(code)}
    used |= set(re.findall(r"nnsam2_utils(?:\.\w+)+", (ROOT / "Snakefile").read_text(encoding="utf-8")))
    text_refs = set()
    for path in PACKAGE.rglob("*.py"):
        text_refs |= set(re.findall(r"nnsam2_utils(?:\.\w+)+", path.read_text(encoding="utf-8")))
    unused = [
        n
        for n in known
        if n.count(".") > 1
        and not n.endswith("__init__")
        and not any(u == n or u.startswith(n + ".") for u in used | text_refs)
        and n not in ("nnsam2_utils.cli",)  # the console script
        and not n.startswith("nnsam2_utils.refine.trainers")
    ]  # found by nnU-Net through nnUNet_extTrainer
    assert not unused, f"modules no product file imports: {unused}"


def test_nnunet_dataset_ids_are_named_in_one_module():
    id_like = re.compile(r"\b(50[1-9]|59\d)\b")
    offenders = []
    for path in list(PACKAGE.rglob("*.py")) + list((ROOT / "notebooks").glob("*.ipynb")) + [ROOT / "Snakefile"]:
        if path == PACKAGE / "refine" / "stages.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if id_like.search(line) and re.search(r"(?i)dataset|fit\(|id", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders


def test_method_citations_point_into_the_repository():
    for path in [
        *PACKAGE.rglob("*.py"),
        *(ROOT / "notebooks").glob("*.ipynb"),
        *(ROOT / "book").glob("*.md"),
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "config").glob("*.yaml"),
        ROOT / "README.md",
    ]:
        assert "METHOD.md" not in path.read_text(encoding="utf-8"), path
    sections = set(
        re.findall(r"^#{2,3} (\d+(?:\.\d+)?)", (ROOT / "docs" / "method.md").read_text(encoding="utf-8"), re.M)
    )
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "notebooks").glob("*.ipynb")]:
        for cited in re.findall(r"docs/method\.md §(\d+(?:\.\d+)?)", path.read_text(encoding="utf-8")):
            assert cited in sections, f"{path.relative_to(ROOT)} cites §{cited}, not a section of docs/method.md"


def test_notebook_code_cells_are_short():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            if cell["cell_type"] == "code":
                lines = "".join(cell["source"]).splitlines()
                assert len(lines) <= 15, f"{path.name} cell {i}: {len(lines)} lines"


#: Page modules whose imports a step's check also follows (the which-slice page's own report module).
#: The pages (notebooks) whose Snakemake rule declares a step's code (``code("<step>")`` in the Snakefile): what a
#: page imports must be declared too, or editing it would leave the page stale.
STEP_PAGES = {
    "cohort": ("00_cohort",),
    "prepare": ("01_prepare",),
    "stage0": ("02_stage0",),
    "refine": ("03_refine",),
    "supervised": ("05_supervised",),
    "repeat": ("05_repeat",),
    "oneshot": ("05_oneshot",),
    "results": ("04_results", "08_run_record"),
    "own_scans": ("09_own_scans",),
    "agreement": ("06_agreement",),
    "teaching": ("07_teaching",),
    "which_slice": ("07_which_slice",),
    "new_subjects": (),  # no page: the results page reads it back
}


def page_imports(step: str) -> set[str]:
    """The nnsam2_utils modules the pages of a step import."""
    import nbformat

    found: set[str] = set()
    for page in STEP_PAGES.get(step, ()):
        nb = nbformat.read(str(ROOT / "notebooks" / f"{page}.ipynb"), as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                found |= imports_of_text(cell.source)
    # ``from nnsam2_utils import steps`` reaches the step functions through the package's lazy table; the pages call
    # their own step, which the walk starts from
    return found - {"nnsam2_utils", "nnsam2_utils.steps"}


def test_every_step_with_code_has_its_pages_listed():
    """Each ``code("<step>")`` of the Snakefile is a step whose pages this test follows."""
    declared = set(re.findall(r'code\("([a-z_0-9]+)"\)', (ROOT / "Snakefile").read_text(encoding="utf-8")))
    assert declared == set(STEP_PAGES)


def test_each_step_declares_the_code_it_runs():
    """A step's run key hashes its modules (workflow/code_deps.py): every module its step function reaches is listed."""
    from nnsam2_utils.workflow.code_deps import step_files, view_files

    known = modules()
    for step in STEP_PAGES:
        todo, seen = [f"nnsam2_utils.steps.{step}", *page_imports(step)], set()
        while todo:
            name = todo.pop()
            if name in seen or name not in known:
                continue
            seen.add(name)
            todo += [m if m in known else m.rsplit(".", 1)[0] for m in imports_of(known[name])]
        listed = {str(p.relative_to(PACKAGE)) for p in step_files(step) + view_files(step)}
        missing = sorted(str(known[n].relative_to(PACKAGE)) for n in seen)
        missing = [m for m in missing if m not in listed and not m.endswith("__init__.py")]
        assert not missing, f"step {step} runs {missing}, not in workflow/code_deps.py"


def test_every_module_is_in_the_architecture_map():
    """docs/architecture.md lists every module of the package, one line each (new modules included)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [
        path.relative_to(PACKAGE).as_posix()
        for path in sorted(PACKAGE.rglob("*.py"))
        if f"| `{path.relative_to(PACKAGE).as_posix()}` |" not in text
    ]
    assert not missing, f"add to docs/architecture.md: {missing}"
