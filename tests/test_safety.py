"""Safety: weights loaded safely, YAML loaded safely, parameters are data, no network, inputs read-only.

The source checks read the helper package's syntax tree (not its text), so a comment or a
docstring cannot satisfy or fail them. The run-time checks run real pipeline code with the
network switched off and with every Python-level file open under the data root recorded.
"""

from __future__ import annotations

import ast
import hashlib
import socket
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnsam2_utils"


def source_of(path: Path) -> str:
    """A module's source, or a notebook's code cells joined (IPython magics and shell lines left out)."""
    if path.suffix != ".ipynb":
        return path.read_text(encoding="utf-8")
    cells = nbformat.read(str(path), as_version=4).cells
    lines = [
        line
        for c in cells
        if c.cell_type == "code"
        for line in c.source.splitlines()
        if not line.lstrip().startswith(("%", "!"))
    ]
    return "\n".join(lines)


def calls(path: Path) -> list[tuple[str, ast.Call]]:
    """Every call in a module with its dotted callee name (``torch.load``, ``yaml.load``, ``eval`` …)."""
    out = []
    for node in ast.walk(ast.parse(source_of(path), str(path))):
        if isinstance(node, ast.Call):
            parts, func = [], node.func
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            # a chain that does not start at a name (``net.to(device).eval()``) is a method call
            parts.append(func.id if isinstance(func, ast.Name) else "?")
            out.append((".".join(reversed(parts)), node))
    return out


def package_calls() -> list[tuple[Path, str, ast.Call]]:
    """Every call in the helper package, the stage notebooks and the benchmarks."""
    files = [
        *sorted(PACKAGE.rglob("*.py")),
        *sorted((ROOT / "notebooks").glob("*.ipynb")),
        *sorted((ROOT / "benchmarks").glob("*.py")),
    ]
    return [(path, name, node) for path in files for name, node in calls(path)]


def keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else kw.value
    return None


def test_every_torch_load_in_the_package_is_weights_only():
    loads = [(p, n) for p, name, n in package_calls() if name == "torch.load"]
    assert loads, "the LiteMedSAM loader calls torch.load"
    unsafe = [f"{p.relative_to(ROOT)}:{n.lineno}" for p, n in loads if keyword(n, "weights_only") is not True]
    assert not unsafe, unsafe


def test_yaml_is_only_loaded_with_safe_load_and_nothing_is_unpickled_or_evaluated():
    banned = {
        "yaml.load",
        "yaml.unsafe_load",
        "yaml.full_load",
        "eval",
        "exec",
        "pickle.load",
        "pickle.loads",
        "compile",
        "__import__",
        "marshal.loads",
    }
    found = [
        f"{p.relative_to(ROOT)}:{n.lineno} {name}"
        for p, name, n in package_calls()
        if name in banned and not (name == "__import__" and n.args and isinstance(n.args[0], ast.Constant))
    ]
    assert not found, found
    from nnsam2_utils.data.io import _StrictLoader

    assert issubclass(_StrictLoader, yaml.SafeLoader)  # the one YAML reader builds plain data only
    pickled = [
        f"{p.relative_to(ROOT)}:{n.lineno}"
        for p, name, n in package_calls()
        if name.endswith("np.load") and keyword(n, "allow_pickle") not in (None, False)
    ]
    assert not pickled, pickled
    shell = [
        f"{p.relative_to(ROOT)}:{n.lineno}"
        for p, name, n in package_calls()
        if name.startswith("subprocess.") and keyword(n, "shell") not in (None, False)
    ]
    assert not shell, shell


def test_a_yaml_tag_that_would_run_code_is_refused(tmp_path):
    from nnsam2_utils.data.manifest import load_manifest
    from nnsam2_utils.errors import ManifestError

    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(path)
    assert not marker.exists()


def test_notebook_parameters_cells_hold_only_literal_values():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        for statement in ast.parse(cell.source).body:
            assert isinstance(statement, ast.Assign) and all(isinstance(t, ast.Name) for t in statement.targets), (
                path.name,
                ast.unparse(statement),
            )
            ast.literal_eval(statement.value)  # raises for anything but a literal


def test_command_line_parameters_stay_strings_never_code(tmp_path):
    import yaml

    from nnsam2_utils.workflow.notebook import parse_parameters

    marker = tmp_path / "ran"
    text = f"__import__('os').system('touch {marker}')"
    assert parse_parameters([("dataset", text)]) == {"dataset": text}
    with pytest.raises(yaml.YAMLError):
        parse_parameters([("dataset", f"!!python/object/apply:os.system ['touch {marker}']")])
    assert not marker.exists()


# --------------------------------------------------------------------------- run time
class NetworkUsed(RuntimeError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Every socket creation and name lookup raises (a guard: the code under test must not need them)."""

    def refuse(*args, **kwargs):
        raise NetworkUsed(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


class OpenRecorder:
    """Python-level ``open`` events (builtins.open, os.open, …) under a folder, via an audit hook."""

    def __init__(self):
        self.folder: Path | None = None
        self.writes: list[str] = []
        self.reads = 0

    def __call__(self, event: str, args: tuple) -> None:
        if event != "open" or self.folder is None or not isinstance(args[0], (str, Path)):
            return
        path = Path(args[0]).resolve() if not isinstance(args[0], int) else None
        if path is None or self.folder not in (path, *path.parents):
            return
        mode, flags = args[1], args[2]
        import os

        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
        )
        if writing:
            self.writes.append(f"{path} mode={mode} flags={flags}")
        else:
            self.reads += 1


RECORDER = OpenRecorder()
sys.addaudithook(RECORDER)


def test_prepare_and_stage0_model_run_offline_and_open_inputs_read_only(tmp_path, no_network):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_bad_inputs import folder_digest, run_prepare, write_dataset

    from nnsam2_utils.propagate.litemedsam import LiteMedSAMPropagator, checkpoint_path

    manifest = write_dataset(tmp_path)
    data = (tmp_path / "d").resolve()
    before = folder_digest(data)
    stamps = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    RECORDER.folder, RECORDER.writes, RECORDER.reads = data, [], 0
    try:
        table = run_prepare(manifest)()
    finally:
        RECORDER.folder = None
    assert table.n_slices.tolist() == [8]
    assert RECORDER.reads >= 2, "nibabel's payload check opens each input through Python"
    assert not RECORDER.writes, RECORDER.writes
    assert folder_digest(data) == before and {p: p.stat().st_mtime_ns for p in data.rglob("*")} == stamps

    weights = checkpoint_path().resolve()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    RECORDER.folder, RECORDER.writes = weights.parent, []
    try:
        propagator = LiteMedSAMPropagator(device="cpu")  # verified hash, weights_only load, no download
        embedding = propagator.embed(np.zeros((1, 256, 256), np.uint8))
    finally:
        RECORDER.folder = None
    assert embedding.shape[0] == 1 and np.isfinite(embedding).all()
    assert not RECORDER.writes, RECORDER.writes
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest


def test_the_network_guard_itself_fires(no_network):
    with pytest.raises(NetworkUsed):
        socket.create_connection(("example.org", 80), timeout=1)
