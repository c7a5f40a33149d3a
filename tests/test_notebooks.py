"""papermill executes notebooks for real: parameters as data, output only on success."""

import nbformat
import pytest

from nnsam2_utils.workflow import notebook as notebooks


def make_notebook(path, body: str):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("stage = 1\nname = 'x'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_parameters_are_yaml_scalars_never_code():
    assert notebooks.parse_parameters([("stage", "2"), ("dataset", "word_ct"), ("x", "null")]) == {
        "stage": 2,
        "dataset": "word_ct",
        "x": None,
    }
    assert notebooks.parse_parameters([("cmd", "__import__('os').system('echo hi')")])["cmd"].startswith("__import__")
    with pytest.raises(ValueError, match="scalar"):
        notebooks.parse_parameters([("x", "[1, 2]")])
    with pytest.raises(ValueError, match="identifier"):
        notebooks.parse_parameters([("a b", "1")])


def test_execute_shows_the_values_run_with_and_titles_the_page_with_them(tmp_path):
    source = make_notebook(tmp_path / "in.ipynb", "print(stage * 10, name)")
    nb = nbformat.read(str(source), as_version=4)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("# Refinement\n\nOne stage."))
    nbformat.write(nb, str(source))
    out = notebooks.execute(source, tmp_path / "out" / "run.ipynb", {"stage": 3, "name": "ct"})
    nb = nbformat.read(str(out), as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    defaults = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert injected and "stage = 3" in injected[0].source and "remove-input" not in injected[0].metadata["tags"]
    assert "remove-cell" in defaults[0].metadata["tags"]  # `stage = 1` (the default) is not on the page
    assert nb.cells[0].source == "# Refinement: stage 3\n\nOne stage."
    assert "30 ct" in nb.cells[-1].outputs[0]["text"]


def test_a_failing_notebook_leaves_no_output(tmp_path):
    source = make_notebook(tmp_path / "in.ipynb", "raise RuntimeError('boom')")
    with pytest.raises(Exception, match="boom"):
        notebooks.execute(source, tmp_path / "out.ipynb")
    assert not (tmp_path / "out.ipynb").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.ipynb"]


def test_a_kernel_slow_to_report_after_a_cell_does_not_fail_the_page(tmp_path):
    # On a starved machine the kernel can send a cell's reply and report idle seconds later; papermill's own
    # 4 s wait then failed the page. Here the kernel itself waits 6 s after each reply before it reports.
    slow = (
        "import time\n"
        "kernel = get_ipython().kernel\n"
        "after = kernel.post_handler_hook\n"
        "kernel.post_handler_hook = lambda: (time.sleep(6), after())\n"
        "print('ran', stage)"
    )
    source = make_notebook(tmp_path / "in.ipynb", slow)
    out = notebooks.execute(source, tmp_path / "out.ipynb", {"stage": 2})
    assert "ran 2" in nbformat.read(str(out), as_version=4).cells[-1].outputs[0]["text"]


def test_stage_notebooks_are_committed_without_outputs_and_with_parameters():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "notebooks"
    books = sorted(folder.glob("*.ipynb"))
    assert len(books) >= 8
    for path in books:
        nb = nbformat.read(str(path), as_version=4)
        nbformat.validate(nbformat.reads(path.read_text(encoding="utf-8"), as_version=nbformat.NO_CONVERT))
        assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"), (
            path
        )
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "profile" in tagged[0].source, path
