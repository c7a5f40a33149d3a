"""LiteMedSAM's image encoder through OpenVINO (nnsam2_utils.propagate.encoder_export) against eager torch.

The real encoder is exported once per module (about a minute) into a temporary cache. The cache's own
rules (reuse, rebuild on changed weights digest or corrupt files, atomic files, no telemetry outside
the project) are exercised on a small real network with the encoder's interface, exported in a second.

Measured on this machine (2 cores with avx512_bf16, OpenVINO 2026.4.1, fp32 on 12 synthetic slices,
benchmarks/bench_encoder.py): max |embedding difference| to torch 3.9e-6 (embeddings up to 0.87); the
propagated masks are identical (0 pixels differ). The bounds below are a few times above that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnsam2_utils.errors import CheckpointError, ConfigError
from nnsam2_utils.evaluate.metrics import dice_per_class
from nnsam2_utils.propagate import encoder_export as ee
from nnsam2_utils.propagate import make_propagator
from nnsam2_utils.propagate.litemedsam import EMBEDDING_SHAPE, LiteMedSAMPropagator

EMBEDDING_ATOL = 2e-5  # max |OpenVINO fp32 − torch| over the synthetic slices
MASK_DSC_BAR = 0.999  # per class, OpenVINO fp32 masks against torch masks
MASK_PIXELS_MAX = 20  # differing pixels over a whole propagated stack
TINY_SHA = "0" * 63 + "1"  # the tiny network's stand-in weights digest
REPO = Path(__file__).resolve().parents[1]


def ellipse_scan(n: int, shift: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 model-space stack (n, 256, 256) and its class masks (tests/synthetic.py)."""
    from synthetic import ellipse_stack

    return ellipse_stack(n, shift=shift, seed=seed)


class TinyEncoderModel(torch.nn.Module):
    """A small real network with LiteMedSAM's encoder interface: float (1, 3, 256, 256) → (1, 256, 64, 64)."""

    def __init__(self, checkpoint_sha256: str = TINY_SHA) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image_encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 256, 4, stride=4), torch.nn.GELU())
        self.checkpoint_sha256 = checkpoint_sha256
        self.eval()


def identity(path: Path) -> tuple[int, int]:
    """(inode, mtime in ns) of a file: changes when the file is written again or replaced."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def files_of(folder: Path) -> list[str]:
    """Names in ``folder``, sorted."""
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- the real encoder
@pytest.fixture(scope="module")
def cache_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("openvino_encoder")


@pytest.fixture(scope="module")
def torch_propagator() -> LiteMedSAMPropagator:
    return LiteMedSAMPropagator(device="cpu")


@pytest.fixture(scope="module")
def ov_propagator(cache_folder) -> LiteMedSAMPropagator:
    return LiteMedSAMPropagator(device="cpu", encoder="openvino", encoder_cache=cache_folder)


@pytest.fixture(scope="module")
def reference_scan():
    return ellipse_scan(4, shift=0, seed=0)


@pytest.fixture(scope="module")
def target_scan():
    return ellipse_scan(3, shift=4, seed=1)


def test_exported_once_with_named_files(ov_propagator, cache_folder):
    paths = ee.ir_paths(cache_folder, ov_propagator.checkpoint_sha256, "f32")
    assert files_of(cache_folder) == sorted(paths[ext].name for ext in ("xml", "bin", "json", "lock"))
    name = paths["xml"].name
    assert ov_propagator.checkpoint_sha256 in name and "f32" in name
    assert f"ov{ee.openvino_version().split('-')[0]}" in name
    record = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert record["weights_sha256"] == ov_propagator.checkpoint_sha256
    assert record["openvino"] == ee.openvino_version() and record["precision"] == "f32"


def test_compiled_in_fp32_with_torch_threads(ov_propagator):
    ov = ee.openvino_module()
    compiled = ov_propagator.image_encoder().compiled
    assert ov_propagator.encoder == "openvino"
    assert compiled.get_property(ov.properties.hint.inference_precision()) == ov.Type.f32
    assert compiled.get_property(ov.properties.inference_num_threads()) == torch.get_num_threads()


def test_embeddings_match_torch(ov_propagator, torch_propagator, reference_scan, target_scan):
    for frames in (reference_scan[0], target_scan[0]):
        ours, theirs = ov_propagator.encode(frames), torch_propagator.encode(frames)
        assert ours.shape == theirs.shape == (len(frames), *EMBEDDING_SHAPE)
        assert ours.dtype == theirs.dtype == torch.float32 and ours.device == theirs.device
        difference = float((ours - theirs).abs().max())
        assert difference <= EMBEDDING_ATOL, difference
    pooled = ov_propagator.embed(reference_scan[0])
    assert np.allclose(pooled, torch_propagator.embed(reference_scan[0]), atol=EMBEDDING_ATOL)


@pytest.mark.parametrize("on_reference", [False, True], ids=["target", "reference"])
def test_propagated_masks_match_torch(ov_propagator, torch_propagator, reference_scan, target_scan, on_reference):
    frames, labels = reference_scan
    target = frames if on_reference else target_scan[0]
    results = [
        p.propagate(frames, 0, labels[0], target, "case", target_is_reference=on_reference)
        for p in (ov_propagator, torch_propagator)
    ]
    dsc = dice_per_class(results[0].masks, results[1].masks)
    assert min(dsc.values()) >= MASK_DSC_BAR, dsc
    assert np.count_nonzero(results[0].masks != results[1].masks) <= MASK_PIXELS_MAX
    assert np.allclose(results[0].confidence["iou"], results[1].confidence["iou"], atol=1e-3, equal_nan=True)


def test_make_propagator_reads_encoder_settings_and_reuses_the_cache(ov_propagator, cache_folder):
    paths = ee.ir_paths(cache_folder, ov_propagator.checkpoint_sha256, "f32")
    before = {ext: identity(paths[ext]) for ext in ("xml", "bin", "json")}
    again = make_propagator({"backend": "litemedsam", "encoder": "openvino", "encoder_cache": str(cache_folder)})
    assert again.encoder == "openvino"
    assert {ext: identity(paths[ext]) for ext in ("xml", "bin", "json")} == before  # not exported again
    assert make_propagator({"backend": "litemedsam"}).encoder == "torch"


def test_unknown_encoder_is_refused():
    with pytest.raises(ConfigError, match="propagation.encoder"):
        LiteMedSAMPropagator(device="cpu", encoder="openvino-int8")


# ----------------------------------------------------------------------------- the real decoder
@pytest.fixture(scope="module")
def decoder_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("openvino_decoder")


@pytest.fixture(scope="module")
def ov_decoder_propagator(decoder_cache) -> LiteMedSAMPropagator:
    """Eager torch's encoder with the prompt encoder + mask decoder through OpenVINO."""
    return LiteMedSAMPropagator(device="cpu", decoder="openvino", encoder_cache=decoder_cache)


def test_the_decoder_is_exported_under_its_own_name(ov_decoder_propagator, decoder_cache):
    paths = ee.ir_paths(decoder_cache, ov_decoder_propagator.checkpoint_sha256, "f32", part="decoder")
    assert files_of(decoder_cache) == sorted(paths[ext].name for ext in ("xml", "bin", "json", "lock"))
    assert paths["xml"].name.startswith("litemedsam_decoder-") and ov_decoder_propagator.decoder == "openvino"
    record = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert record["part"] == "decoder" and record["input_shape"] == [[1, 256, 64, 64], [2, 1, 4]]


@pytest.mark.parametrize("boxes", [[(40, 60, 120, 180)], [(40, 60, 120, 180), (130, 60, 210, 180)]], ids=["1", "2"])
def test_decoder_logits_match_torch(ov_decoder_propagator, torch_propagator, target_scan, boxes):
    embedding = torch_propagator.encode(target_scan[0])[1]
    (ours, our_iou), (theirs, their_iou) = (
        p.decode(embedding, boxes) for p in (ov_decoder_propagator, torch_propagator)
    )
    assert ours.shape == theirs.shape == (len(boxes), 256, 256) and our_iou.shape == (len(boxes),)
    assert float(np.abs(ours - theirs).max()) <= 1e-4 and float(np.abs(our_iou - their_iou).max()) <= 1e-5
    with pytest.raises(ValueError, match="1 to 2 boxes"):
        ov_decoder_propagator.decode(embedding, boxes * 2 if len(boxes) == 2 else [])


@pytest.mark.parametrize("on_reference", [False, True], ids=["target", "reference"])
def test_masks_with_the_openvino_decoder_match_torch(
    ov_decoder_propagator, torch_propagator, reference_scan, target_scan, on_reference
):
    frames, labels = reference_scan
    target = frames if on_reference else target_scan[0]
    ours, theirs = (
        p.propagate(frames, 0, labels[0], target, "case", target_is_reference=on_reference)
        for p in (ov_decoder_propagator, torch_propagator)
    )
    assert np.count_nonzero(ours.masks != theirs.masks) <= MASK_PIXELS_MAX
    assert np.allclose(ours.confidence["iou"], theirs.confidence["iou"], atol=1e-4, equal_nan=True)


def test_make_propagator_reads_the_decoder_setting_and_refuses_an_unknown_one(decoder_cache):
    settings = {"backend": "litemedsam", "decoder": "openvino", "encoder_cache": str(decoder_cache)}
    assert make_propagator(settings).decoder == "openvino"
    assert make_propagator({"backend": "litemedsam"}).decoder == "torch"
    with pytest.raises(ConfigError, match="propagation.decoder"):
        LiteMedSAMPropagator(device="cpu", decoder="openvino-bf16")


# ----------------------------------------------------------------------------- the cache, on a tiny network
@pytest.fixture()
def tiny() -> TinyEncoderModel:
    return TinyEncoderModel()


def run_tiny(compiled, model: TinyEncoderModel, n: int = 2) -> float:
    """Max |OpenVINO − torch| of the tiny network on ``n`` random images, through OpenVINOEncoder."""
    images = torch.rand((n, 3, 256, 256), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model.image_encoder(images)
    got = ee.OpenVINOEncoder(compiled)(images)
    assert got.shape == expected.shape == (n, 256, 64, 64) and got.dtype == torch.float32
    return float((got - expected).abs().max())


def test_second_load_reuses_the_ir(tiny, tmp_path):
    paths = ee.ir_paths(tmp_path, TINY_SHA, "f32")
    assert run_tiny(ee.load_encoder(tmp_path, TINY_SHA, model=tiny), tiny) < 1e-5
    first = {ext: identity(paths[ext]) for ext in ("xml", "bin", "json")}
    assert run_tiny(ee.load_encoder(tmp_path, TINY_SHA, model=tiny), tiny) < 1e-5
    assert {ext: identity(paths[ext]) for ext in ("xml", "bin", "json")} == first
    assert files_of(tmp_path) == sorted(p.name for p in paths.values())  # no temporary files left


def test_changed_weights_digest_re_exports(tiny, tmp_path):
    paths = ee.ir_paths(tmp_path, TINY_SHA, "f32")
    ee.load_encoder(tmp_path, TINY_SHA, model=tiny)
    before = identity(paths["xml"])
    record = json.loads(paths["json"].read_text(encoding="utf-8"))
    paths["json"].write_text(json.dumps({**record, "weights_sha256": "f" * 64}))
    assert run_tiny(ee.load_encoder(tmp_path, TINY_SHA, model=tiny), tiny) < 1e-5
    assert identity(paths["xml"]) != before
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["weights_sha256"] == TINY_SHA


def test_other_weights_get_their_own_ir(tiny, tmp_path):
    ee.load_encoder(tmp_path, TINY_SHA, model=tiny)
    other = TinyEncoderModel("a" * 64)
    ee.load_encoder(tmp_path, "a" * 64, model=other)
    assert ee.ir_paths(tmp_path, TINY_SHA, "f32")["xml"].is_file()
    assert ee.ir_paths(tmp_path, "a" * 64, "f32")["xml"].is_file()


@pytest.mark.parametrize(
    "damage",
    ["truncate_bin", "flip_bin", "edit_xml", "delete_bin", "garble_record"],
)
def test_damaged_cache_is_rebuilt(tiny, tmp_path, damage):
    paths = ee.ir_paths(tmp_path, TINY_SHA, "f32")
    ee.load_encoder(tmp_path, TINY_SHA, model=tiny)
    before = identity(paths["xml"])
    if damage == "truncate_bin":
        paths["bin"].write_bytes(paths["bin"].read_bytes()[:-100])
    elif damage == "flip_bin":
        data = bytearray(paths["bin"].read_bytes())
        data[len(data) // 2] ^= 0xFF
        paths["bin"].write_bytes(bytes(data))
    elif damage == "edit_xml":
        paths["xml"].write_text(paths["xml"].read_text(encoding="utf-8").replace("<layers>", "<layers> "))
    elif damage == "delete_bin":
        paths["bin"].unlink()
    else:
        paths["json"].write_text("{not json")
    assert run_tiny(ee.load_encoder(tmp_path, TINY_SHA, model=tiny), tiny) < 1e-5
    assert identity(paths["xml"]) != before
    record = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert ee._sha256(paths["bin"].read_bytes()) == record["bin_sha256"]
    assert ee._sha256(paths["xml"].read_bytes()) == record["xml_sha256"]


def test_model_with_other_weights_is_refused(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint_sha256"):
        ee.load_encoder(tmp_path, "b" * 64, model=tiny)


def test_default_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NNSAM2_WORK", str(tmp_path / "elsewhere"))
    assert ee.default_cache_folder() == (tmp_path / "elsewhere" / "_models" / "litemedsam_openvino").resolve()
    monkeypatch.delenv("NNSAM2_WORK")
    (tmp_path / "repo" / "config").mkdir(parents=True)
    (tmp_path / "repo" / "pyproject.toml").write_text("")
    (tmp_path / "repo" / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "repo" / "notebooks")
    assert ee.default_cache_folder() == (tmp_path / "repo" / "work" / "_models" / "litemedsam_openvino").resolve()


def test_two_processes_share_one_export_and_write_nothing_outside(tmp_path):
    """Two processes loading at once: one exports, the other waits and reuses it; nothing is written under
    $HOME (importing openvino and converting would otherwise start OpenVINO's telemetry, which writes ~/intel)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env.update(HOME=str(home), PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}")
    code = (
        "import logging, os\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from test_encoder_export import TinyEncoderModel, TINY_SHA, run_tiny\n"
        "from nnsam2_utils.propagate import encoder_export as ee\n"
        f"model = TinyEncoderModel(); compiled = ee.load_encoder({str(tmp_path / 'cache')!r}, TINY_SHA, model=model)\n"
        "assert run_tiny(compiled, model) < 1e-5 and 'CI' not in os.environ\n"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    logs = [worker.communicate(timeout=300)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], logs
    assert sum(log.count("exporting the LiteMedSAM encoder") for log in logs) == 1, logs
    assert list(home.iterdir()) == []


# ----------------------------------------------------------------------------- bf16
@pytest.mark.skipif(ee.cpu_supports_bf16(), reason="this CPU has native bf16")
def test_bf16_refused_without_cpu_support(tiny, tmp_path):
    with pytest.raises(ConfigError, match="propagation.encoder.*openvino"):
        ee.load_encoder(tmp_path, TINY_SHA, "bf16", model=tiny)
    assert files_of(tmp_path) == []  # refused before any export


@pytest.mark.skipif(not ee.cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_bf16_runs_with_cpu_support(tiny, tmp_path):
    ov = ee.openvino_module()
    compiled = ee.load_encoder(tmp_path, TINY_SHA, "bf16", model=tiny)
    assert compiled.get_property(ov.properties.hint.inference_precision()) == ov.Type.bf16
    assert run_tiny(compiled, tiny) < 0.05  # bf16 keeps 8 significant bits
    assert ee.ir_paths(tmp_path, TINY_SHA, "bf16")["xml"].is_file()
    assert not ee.ir_paths(tmp_path, TINY_SHA, "f32")["xml"].exists()


def test_unknown_precision_is_refused(tiny, tmp_path):
    with pytest.raises(ConfigError, match="precision"):
        ee.load_encoder(tmp_path, TINY_SHA, "int8", model=tiny)
