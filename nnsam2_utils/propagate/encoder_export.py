"""LiteMedSAM's image encoder (and mask decoder) through OpenVINO on the CPU: export, cache and load (stage 0's hot
path).

The TinyViT image encoder is where stage 0 spends its time (about 1.4–2.2 s per 256² slice with eager
fp32 torch on two CPU cores). :func:`export_encoder` converts it once with ``openvino.convert_model``
(static input ``(1, 3, 256, 256)``, the shape of :func:`~nnsam2_utils.propagate.litemedsam.encoder_input`
for one slice) and saves the IR with fp32 weights (``compress_to_fp16=False``: OpenVINO's default would
round the weights to fp16). :func:`load_encoder` compiles it for the CPU with

* ``INFERENCE_PRECISION_HINT`` set explicitly: ``f32`` by default (without the hint OpenVINO runs in
  bf16 on its own on CPUs with AMX or avx512_bf16), ``bf16`` only when asked for and the CPU reports it;
* ``INFERENCE_NUM_THREADS`` = ``torch.get_num_threads()``, so the workflow's thread policy holds.

The prompt encoder and mask decoder (``part="decoder"``, fp32 only) are exported the same way, as one network of
static inputs: one slice embedding ``(1, 256, 64, 64)`` and :data:`DECODER_BOXES` box prompts ``(2, 1, 4)`` (one
per class; a single box is padded with a copy and its copy's output dropped: SAM's decoder treats each prompt on
its own, so the padding changes nothing). It takes 0.55–0.65× eager torch's time on one or two threads, with
logits within 1e-4 of torch's (benchmarks/bench_encoder.py); the Which-slice chapter spends most of its stage 0
there.

The cache, in one folder (default: :func:`default_cache_folder`), per part, weights, OpenVINO version and
precision (the decoder's files are named ``litemedsam_decoder-…``)::

    litemedsam_encoder-<weights SHA-256>-ov<version>-<precision>.xml / .bin   the IR
    litemedsam_encoder-<…>.json    weights SHA-256, OpenVINO version, precision, SHA-256 of .xml and .bin
    litemedsam_encoder-<…>.lock    serialises exporters across processes

A cached IR is used only when its record names the same weights, OpenVINO build and precision and the
bytes read (and then compiled, from memory) match the recorded digests; otherwise it is rebuilt. Files are
written under temporary names and moved in place with ``os.replace`` (the record last), so a crash or a
concurrent export never leaves a partial file under the final name; exporters also take an advisory lock.

Importing ``openvino`` and calling ``convert_model`` start OpenVINO's opt-out telemetry (it writes
``~/intel/`` and sends usage events); this module declines it for its own imports and conversions through
the package's switch for CI jobs (``CI=true``, set only while importing or converting), so nothing is
written outside the project and nothing is sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from nnsam2_utils.errors import CheckpointError, ConfigError

try:  # advisory locks between exporting processes (POSIX); without fcntl, os.replace alone keeps files whole
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

log = logging.getLogger(__name__)

PRECISIONS = ("f32", "bf16")
INPUT_SHAPE = (1, 3, 256, 256)
#: The exported networks: the image encoder, and the prompt encoder with the mask decoder.
PARTS = ("encoder", "decoder")
#: Box prompts per decoder call in the decoder's IR (LiteMedSAM's two classes).
DECODER_BOXES = 2
DECODER_SHAPES = ((1, 256, 64, 64), (DECODER_BOXES, 1, 4))
CACHE_SUBFOLDER = Path("_models") / "litemedsam_openvino"


# --------------------------------------------------------------------------- the openvino package
@contextlib.contextmanager
def _telemetry_declined() -> Iterator[None]:
    """Within the block, OpenVINO's telemetry sees a CI job (``CI=true``) and neither writes nor sends anything."""
    before = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = before


def openvino_module() -> ModuleType:
    """The ``openvino`` package, imported with its telemetry declined (see the module docstring)."""
    with _telemetry_declined():
        import openvino
    return openvino


def openvino_version() -> str:
    """The full OpenVINO build string, e.g. ``2026.4.1-22982-e213a147257-releases/2026/4``."""
    return openvino_module().__version__


def openvino_release() -> str:
    """The OpenVINO release without its build suffix, e.g. ``2026.4.1`` (names cached files)."""
    return openvino_version().split("-")[0]


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin reports native bf16 (``OPTIMIZATION_CAPABILITIES`` contains ``BF16``)."""
    ov = openvino_module()
    return "BF16" in ov.Core().get_property("CPU", ov.properties.device.capabilities())


def check_precision(precision: str) -> None:
    """Refuse an unknown precision, and bf16 on a CPU without native bf16 (ConfigError naming the setting)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"OpenVINO encoder precision '{precision}' is unknown; use one of {PRECISIONS}.")
    if precision == "bf16" and not cpu_supports_bf16():
        raise ConfigError(
            "propagation.encoder: 'openvino-bf16' needs a CPU with native bf16 (AMX or avx512_bf16), and OpenVINO "
            "reports none on this machine; set propagation.encoder to 'openvino' (exact fp32) in the run profile."
        )


# --------------------------------------------------------------------------- cache layout
def find_repo_root() -> Path | None:
    """The first folder upwards from the working directory holding pyproject.toml and config/ (None if none)."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "config").is_dir():
            return folder
    return None


def default_cache_folder() -> Path:
    """``$NNSAM2_WORK/_models/litemedsam_openvino`` if set, else ``<repo root or cwd>/work/_models/…``."""
    base = os.environ.get("NNSAM2_WORK")
    work = Path(base) if base else (find_repo_root() or Path.cwd()) / "work"
    return (work / CACHE_SUBFOLDER).resolve()


def ir_stem(weights_sha256: str, precision: str, part: str = "encoder") -> str:
    """File name stem of a cached IR: the part, the weights' SHA-256, the OpenVINO release and the precision."""
    return f"litemedsam_{part}-{weights_sha256.lower()}-ov{openvino_release()}-{precision}"


def ir_paths(folder: str | Path, weights_sha256: str, precision: str, part: str = "encoder") -> dict[str, Path]:
    """Paths of the cached IR's files: ``xml``, ``bin``, ``json`` (the record) and ``lock``."""
    stem = Path(folder) / ir_stem(weights_sha256, precision, part)
    return {ext: stem.with_name(f"{stem.name}.{ext}") for ext in ("xml", "bin", "json", "lock")}


def _sha256(data: bytes) -> str:
    """Hex SHA-256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- export
class BoxDecoder(torch.nn.Module):
    """LiteMedSAM's prompt encoder and mask decoder as one network: a slice embedding (1, 256, 64, 64) and box
    prompts (b, 1, 4) → mask logits (b, 1, 256, 256) and predicted IoU (b, 1), as the propagator calls them."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        with torch.no_grad():
            self.register_buffer("image_pe", model.prompt_encoder.get_dense_pe())

    def forward(self, embedding: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        return self.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )


def _network(model: torch.nn.Module, part: str) -> tuple[torch.nn.Module, tuple[tuple[int, ...], ...]]:
    """The module one part exports and its static input shapes (:func:`_network_shapes`)."""
    shapes = _network_shapes(part)  # refuses an unknown part first
    module = model.image_encoder if part == "encoder" else BoxDecoder(model)
    return module.eval(), shapes


def _convert(model: torch.nn.Module, part: str = "encoder") -> Any:
    """One part of ``model`` as an ``openvino.Model`` with static inputs (:func:`_network`)."""
    ov = openvino_module()
    network, shapes = _network(model, part)
    example = tuple(torch.zeros(shape) for shape in shapes)
    if part == "decoder":  # boxes inside the slice, as the propagator gives them
        example = (example[0], torch.tensor([[[40.0, 60.0, 120.0, 180.0]], [[130.0, 60.0, 210.0, 180.0]]]))
    with _telemetry_declined(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # TinyViT's shape asserts, traced as constants
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=FutureWarning)  # OpenVINO traces
        # traced here without torch's trace check (it runs the network again to compare: half of the export time);
        # the exported network is checked against torch's by the tests instead
        with torch.no_grad():
            traced = torch.jit.trace(network, example if len(example) > 1 else example[0], check_trace=False)
        return ov.convert_model(traced, input=[list(shape) for shape in shapes])


def export_encoder(model: torch.nn.Module, folder: str | Path, precision: str = "f32", part: str = "encoder") -> Path:
    """Convert one part of ``model`` (``model.image_encoder``, or :class:`BoxDecoder` for ``part="decoder"``) to an
    OpenVINO IR in ``folder`` (atomically) and record its digests.

    ``model`` is a LiteMedSAM from :func:`~nnsam2_utils.propagate.litemedsam.load_model` on the CPU (its
    ``checkpoint_sha256`` names the files). Returns the .xml path. Each file is written under a temporary
    name and moved in place with ``os.replace``; the last of concurrent writers wins with complete files.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"OpenVINO encoder precision '{precision}' is unknown; use one of {PRECISIONS}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights_sha256 = str(model.checkpoint_sha256).lower()
    final = ir_paths(folder, weights_sha256, precision, part)
    log.info("exporting the LiteMedSAM %s to OpenVINO (%s) in %s (once)", part, precision, folder)
    converted = _convert(model, part)
    token = f".{final['xml'].stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp = {ext: folder / f"{token}.{ext}" for ext in ("xml", "bin", "json")}
    try:
        openvino_module().save_model(converted, tmp["xml"], compress_to_fp16=False)
        record = {
            "weights_sha256": weights_sha256,
            "openvino": openvino_version(),
            "precision": precision,
            "part": part,
            "input_shape": [list(shape) for shape in _network_shapes(part)],
            "xml_sha256": _sha256(tmp["xml"].read_bytes()),
            "bin_sha256": _sha256(tmp["bin"].read_bytes()),
        }
        tmp["json"].write_text(json.dumps(record, indent=2) + "\n")
        for ext in ("bin", "xml", "json"):  # the record last: it vouches for the files before it
            os.replace(tmp[ext], final[ext])
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    return final["xml"]


def _network_shapes(part: str) -> tuple[tuple[int, ...], ...]:
    """The static input shapes of one part's IR."""
    if part not in PARTS:
        raise ConfigError(f"OpenVINO part '{part}' is unknown; use one of {PARTS}.")
    return (INPUT_SHAPE,) if part == "encoder" else DECODER_SHAPES


# --------------------------------------------------------------------------- load
def _verified_ir(
    folder: Path, weights_sha256: str, precision: str, part: str = "encoder"
) -> tuple[bytes, bytes] | None:
    """The cached IR's (xml, bin) bytes if its record matches and its bytes match the record; else None."""
    paths = ir_paths(folder, weights_sha256, precision, part)
    if not all(paths[ext].is_file() for ext in ("xml", "bin", "json")):
        log.info("no cached OpenVINO %s at %s", part, paths["xml"])
        return None
    try:
        record = json.loads(paths["json"].read_text(encoding="utf-8"))
        xml, weights = paths["xml"].read_bytes(), paths["bin"].read_bytes()
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); the OpenVINO encoder is rebuilt", paths["json"], exc)
        return None
    wanted = {"weights_sha256": weights_sha256, "openvino": openvino_version(), "precision": precision}
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in wanted.items()):
        log.warning("%s records other weights, OpenVINO build or precision; the encoder is rebuilt", paths["json"])
        return None
    if _sha256(xml) != record.get("xml_sha256") or _sha256(weights) != record.get("bin_sha256"):
        log.warning("%s or its .bin does not match the recorded SHA-256 (changed or truncated); rebuilt", paths["xml"])
        return None
    return xml, weights


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an advisory exclusive lock on ``lock_path`` (no-op without fcntl)."""
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_ir(
    folder: str | Path,
    weights_sha256: str,
    precision: str = "f32",
    model: torch.nn.Module | None = None,
    part: str = "encoder",
) -> tuple[bytes, bytes]:
    """The verified (xml, bin) bytes of the cached IR, exporting it first when missing, stale or corrupt."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights_sha256 = weights_sha256.lower()
    with _exclusive(ir_paths(folder, weights_sha256, precision, part)["lock"]):
        found = _verified_ir(folder, weights_sha256, precision, part)
        if found is not None:
            return found
        export_encoder(_model_for(weights_sha256, model), folder, precision, part)
        found = _verified_ir(folder, weights_sha256, precision, part)
    if found is None:
        raise CheckpointError(
            f"the OpenVINO {part} just exported to {folder} does not verify; delete that folder and run again."
        )
    return found


def _model_for(weights_sha256: str, model: torch.nn.Module | None) -> torch.nn.Module:
    """``model`` checked against ``weights_sha256`` (the caller loads it: this module imports no backend)."""
    if model is None:
        raise CheckpointError(
            f"exporting the OpenVINO encoder for weights {weights_sha256} needs the loaded model; pass model=."
        )
    if str(model.checkpoint_sha256).lower() != weights_sha256:
        raise CheckpointError(
            f"cannot export the OpenVINO encoder for weights {weights_sha256}: the model holds weights "
            f"{model.checkpoint_sha256}. Pass the propagator's checkpoint_sha256."
        )
    return model


def compile_encoder(xml: bytes, weights: bytes, precision: str = "f32", threads: int | None = None) -> Any:
    """Compile an IR given as bytes for the CPU with explicit inference precision and thread count."""
    ov = openvino_module()
    hint = ov.properties.hint
    core = ov.Core()
    network = core.read_model(xml, ov.Tensor(np.frombuffer(weights, dtype=np.uint8)))
    element = {"f32": ov.Type.f32, "bf16": ov.Type.bf16}[precision]
    config = {
        hint.inference_precision: element,
        ov.properties.inference_num_threads: int(threads if threads is not None else torch.get_num_threads()),
    }
    compiled = core.compile_model(network, "CPU", config)
    actual = compiled.get_property(hint.inference_precision())
    if actual != element:
        raise ConfigError(f"OpenVINO compiled the network in {actual}, not the {precision} asked for; report this.")
    return compiled


def load_encoder(
    folder: str | Path,
    weights_sha256: str,
    precision: str = "f32",
    model: torch.nn.Module | None = None,
    threads: int | None = None,
) -> Any:
    """A compiled OpenVINO encoder (``openvino.CompiledModel``) from the cache in ``folder``.

    Re-exports (from ``model``, or the shipped weights when None) when the IR is missing, recorded for other
    weights / OpenVINO build / precision, or its bytes no longer match the recorded SHA-256. ``threads``:
    ``INFERENCE_NUM_THREADS`` (default ``torch.get_num_threads()``). bf16 raises ConfigError on CPUs without it.
    """
    check_precision(precision)
    xml, weights = cached_ir(folder, weights_sha256, precision, model)
    return compile_encoder(xml, weights, precision, threads)


class OpenVINOEncoder:
    """A compiled encoder called like ``model.image_encoder``: float (b, 3, 256, 256) → float32 (b, 256, 64, 64)."""

    def __init__(self, compiled: Any, precision: str = "f32") -> None:
        self.compiled = compiled
        self.precision = precision
        self._request = compiled.create_infer_request()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """One inference per slice (the IR's input is static); the outputs are copied out of OpenVINO's buffers."""
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        outputs = []
        for image in array:
            self._request.infer({0: image[None]})
            outputs.append(torch.from_numpy(self._request.get_output_tensor(0).data.copy()))
        return torch.cat(outputs) if outputs else torch.empty((0, 256, 64, 64))


def load_decoder(
    folder: str | Path, weights_sha256: str, model: torch.nn.Module | None = None, threads: int | None = None
) -> Any:
    """The compiled OpenVINO prompt encoder + mask decoder (:class:`BoxDecoder`, fp32) from the cache in ``folder``,
    exported first when missing, stale or corrupt (as :func:`load_encoder`)."""
    xml, weights = cached_ir(folder, weights_sha256, "f32", model, part="decoder")
    return compile_encoder(xml, weights, "f32", threads)


class OpenVINODecoder:
    """A compiled :class:`BoxDecoder` called with one slice embedding (256, 64, 64) and 1 to :data:`DECODER_BOXES`
    boxes: float32 mask logits (b, 256, 256) and predicted IoU (b,), as numpy arrays."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self._request = compiled.create_infer_request()

    def __call__(self, embedding: torch.Tensor, boxes: list) -> tuple[np.ndarray, np.ndarray]:
        count = len(boxes)
        if not 1 <= count <= DECODER_BOXES:
            raise ValueError(f"the OpenVINO decoder takes 1 to {DECODER_BOXES} boxes per call, got {count}.")
        padded = list(boxes) + [boxes[-1]] * (DECODER_BOXES - count)  # each prompt is decoded on its own
        prompts = np.asarray(padded, dtype=np.float32).reshape(DECODER_SHAPES[1])
        image = np.ascontiguousarray(embedding.detach().cpu().numpy(), dtype=np.float32).reshape(DECODER_SHAPES[0])
        self._request.infer({0: image, 1: prompts})
        logits = self._request.get_output_tensor(0).data[:count, 0].copy()
        iou = self._request.get_output_tensor(1).data[:count, 0].copy()
        return logits, iou
