"""An example of a dataset in the form users bring: generated scans rewritten the way clinics store them.

From a phantom dataset (``nnsam2_utils.data.synthetic.cohort``) :func:`assemble_example` writes one scan as a
DICOM series stored sagittally, one as NIfTI in RAS+ storage with a clinic-style name, one as MHA;
four-class labels with other values (11, 12, 21, 22) saved as NRRD; the disc levels in a CSV with
other column names, counted along each file's own superior–inferior axis; one annotated slice as a
label volume with a single labelled slice; and the YAML manifest that describes it all. The book
chapter "Use it on your own scans" and the tests run it through the pipeline. :func:`damaged_copy`
makes a copy with the four faults ``nnsam2 data check`` must name.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from nnsam2_utils.data.dicom import write_series
from nnsam2_utils.data.geometry import slice_axis
from nnsam2_utils.data.io import array_to_image, atomic_path, read_image, write_csv, write_image
from nnsam2_utils.data.manifest import load_manifest

USER_VALUES = {1: 11, 2: 12, 3: 21, 4: 22}  # phantom R-ES, R-MF, L-MF, L-ES → the user's own values


def stored_disc(original: sitk.Image, rewritten: sitk.Image, k: int) -> int:
    """The slice number of original slice ``k`` (axial) along the rewritten file's own superior–inferior axis."""
    index = [(s - 1) / 2 for s in original.GetSize()]
    index[slice_axis(original)] = k
    point = original.TransformContinuousIndexToPhysicalPoint(index)
    return int(round(rewritten.TransformPhysicalPointToContinuousIndex(point)[slice_axis(rewritten)]))


def user_label(label: sitk.Image) -> sitk.Image:
    """The phantom's four-class label with the user's label values."""
    array = sitk.GetArrayFromImage(label)
    out = np.zeros(array.shape, np.uint8)
    for source, target in USER_VALUES.items():
        out[array == source] = target
    image = array_to_image(out, label)
    return image


def assemble_example(phantom_manifest: Path, out: Path, name: str = "my_lumbar_t2") -> Path:
    """Write the user-style dataset (the first three scans of ``phantom_manifest``) into ``out``.

    Returns its manifest.
    """
    source = load_manifest(phantom_manifest)
    forms = [("sagittal DICOM", "PIR"), ("RAS NIfTI", "RAS"), ("MHA", "LPI")]
    rows, cases = [], []
    for number, ((form, orientation), case) in enumerate(zip(forms, source.cases), start=1):
        image = read_image(source.resolve(case.image))
        label = read_image(source.resolve(case.label))
        image_u, label_u = sitk.DICOMOrient(image, orientation), sitk.DICOMOrient(label, orientation)
        scan = f"Patient{number}"
        if form == "sagittal DICOM":
            write_series(image_u, out / "scans" / scan / "T2_TSE_ax")
            image_rel = f"scans/{scan}/T2_TSE_ax"
            image_u = read_image(out / image_rel)  # the grid a reader of the series sees
            label_u = sitk.Resample(label_u, image_u, sitk.Transform(), sitk.sitkNearestNeighbor)
        elif form == "RAS NIfTI":
            image_rel = f"scans/{scan}/{scan}_t2.nii"
            write_image(image_u, out / image_rel, compress=False)
        else:
            image_rel = f"scans/{scan}/{scan}_t2.mha"
            write_image(image_u, out / image_rel)
        write_image(user_label(label_u), out / "segmentations" / f"{scan}-muscles.nrrd")
        discs = {level: stored_disc(image, image_u, getattr(case.discs, level)) for level in ("L3L4", "L4L5", "L5S1")}
        rows.append(
            {"scan": scan, "disc_L3_L4": discs["L3L4"], "disc_L4_L5": discs["L4L5"], "disc_L5_S1": discs["L5S1"]}
        )
        cases.append({"id": scan, "image": image_rel, "label": f"segmentations/{scan}-muscles.nrrd"})
        if form == "RAS NIfTI":  # the user's one annotated slice: one slice below L3/L4 of this scan
            step = 1 if discs["L5S1"] > discs["L3L4"] else -1
            k = discs["L3L4"] + step
            array = sitk.GetArrayFromImage(user_label(label_u))
            keep = np.zeros_like(array)
            where = [slice(None)] * 3
            where[2 - slice_axis(image_u)] = k
            keep[tuple(where)] = array[tuple(where)]
            note = array_to_image(keep, label_u)
            write_image(note, out / "segmentations" / f"{scan}-one-slice.nii.gz")
            annotation = {"case": scan, "file": f"segmentations/{scan}-one-slice.nii.gz"}
    write_csv(pd.DataFrame(rows), out / "discs.csv")
    manifest = {
        "name": name,
        "modality": "MRI",
        "sequence": "T2w",
        "root": ".",
        "label_map": {11: 1, 12: 1, 21: 2, 22: 2},
        "muscle_map": {11: "R-ES", 12: "R-MF", 21: "L-MF", 22: "L-ES"},
        "annotation": annotation,
        "cases_csv": {
            "file": "discs.csv",
            "columns": {"id": "scan", "L3L4": "disc_L3_L4", "L4L5": "disc_L4_L5", "L5S1": "disc_L5_S1"},
        },
        "cases": cases,
    }
    path = out / f"{name}.yaml"
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return path


def damaged_copy(manifest_path: Path, out: Path) -> Path:
    """A copy of an example dataset with four faults: a truncated image, a wrong pinned checksum,
    a label on another grid, a label value outside the map. Returns the copy's manifest."""
    from nnsam2_utils.data.io import sha256

    source = Path(manifest_path).parent
    shutil.rmtree(out, ignore_errors=True)  # a fresh copy each time: the faults are planted once
    shutil.copytree(source, out)
    manifest = load_manifest(out / Path(manifest_path).name)
    first, second, third = manifest.cases[:3]
    image = manifest.resolve(second.image)  # a download cut short
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 3])
    label = read_image(manifest.resolve(third.label))  # a label saved on another grid
    label.SetOrigin(tuple(o + 5.0 for o in label.GetOrigin()))
    write_image(label, manifest.resolve(third.label))
    array = sitk.GetArrayFromImage(read_image(manifest.resolve(first.label)))  # a stray label value
    array[array == 22] = 99
    stray = array_to_image(array, read_image(manifest.resolve(first.label)))
    write_image(stray, manifest.resolve(first.label))
    data = yaml.safe_load(Path(manifest.manifest_path).read_text(encoding="utf-8"))
    pinned = sha256(manifest.resolve(third.image))
    data["cases"][2]["sha256"] = {"image": pinned[::-1]}  # pinned for another version of the file
    Path(manifest.manifest_path).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return Path(manifest.manifest_path)


def file_tree(folder: Path, limit: int = 40) -> str:
    """The files under ``folder`` as indented text (DICOM folders summarised)."""
    lines = []
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and path.suffix == ".dcm":
            continue
        count = len(list(path.glob("*.dcm"))) if path.is_dir() else 0
        note = f"  ({count} DICOM slices)" if count else ""
        lines.append("  " * (len(rel.parts) - 1) + rel.name + ("/" if path.is_dir() else "") + note)
    return "\n".join(lines[:limit])
