"""The ``nnsam2`` command line: generate the demo cohort, check and fetch datasets, run the workflow, segment new
scans with a run's trained model and export that model."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from nnsam2_utils.errors import Nnsam2Error
from nnsam2_utils.workflow.workspace import repo_root


def _generate(args: argparse.Namespace) -> int:
    from nnsam2_utils.data.synthetic.cohort import generate_cohort

    paths = generate_cohort(Path(args.out), size=args.size, seed=args.seed, datasets=args.datasets or None)
    for path in paths:
        print(path)
    return 0


def _run(args: argparse.Namespace) -> int:
    root = repo_root()
    if not args.dry_run:
        from nnsam2_utils.workflow.preflight import missing_for_profile

        missing = missing_for_profile(args.profile)
        if missing:
            print(f"profile '{args.profile}' cannot start; {len(missing)} thing(s) missing:", file=sys.stderr)
            for line in missing:
                print(f"  {line}", file=sys.stderr)
            return 2
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(root / "Snakefile"),
        "--directory",
        str(root),
        "--cores",
        str(args.cores),
        "--config",
        f"profile={args.profile}",
    ]
    if args.dry_run:
        command.append("--dry-run")
    command += ["--", args.target]
    return subprocess.call(command)


def _execute(args: argparse.Namespace) -> int:
    from nnsam2_utils.workflow.notebook import execute, parse_parameters

    execute(args.notebook, args.output, parse_parameters(args.parameter or []))
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from nnsam2_utils.data.checks import check_manifest, report

    paths = [Path(p) for p in args.manifest]
    if args.profile:
        from nnsam2_utils.workflow.profile import load_profile

        paths += load_profile(args.profile).manifest_paths()
    if not paths and not args.profile:
        print("error: name at least one MANIFEST or --profile", file=sys.stderr)
        return 2
    problems = []
    for path in paths:
        found = check_manifest(path, checksums=not args.no_checksums, read=not args.quick)
        problems += found
        print(f"{path}: {'OK' if not found else f'{len(found)} problem(s)'}")
    checkpoints = []
    if args.profile:  # the checkpoint as the run reads it (nnsam2_utils/workflow/preflight.py)
        from nnsam2_utils.workflow.preflight import checkpoint_problems

        checkpoints = checkpoint_problems(args.profile, checksums=not args.no_checksums)
        print(
            f"run profile '{args.profile}' checkpoints: {'OK' if not checkpoints else f'{len(checkpoints)} problem(s)'}"
        )
    if problems:
        print(report(problems))
    for line in checkpoints:
        print(line)
    return 1 if problems or checkpoints else 0


def _data_fetch(args: argparse.Namespace) -> int:
    from nnsam2_utils.data.fetch import fetch_manifest, is_pinned
    from nnsam2_utils.data.manifest import load_manifest

    fetched = fetch_manifest(Path(args.manifest))
    items = load_manifest(Path(args.manifest), cases_csv=False).source.downloads
    for path, item in zip(fetched, items):
        print(path if is_pinned(item) else f"{path}  UNVERIFIED: the manifest pins no sha256 for {item.url}")
    return 0


def _slices(text: str) -> tuple[int, int]:
    from nnsam2_utils.apply.inputs import parse_slices

    try:
        return parse_slices(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _predict(args: argparse.Namespace) -> int:
    from nnsam2_utils.apply.predict import predict

    result = predict(
        args.inputs,
        args.out,
        profile=args.profile,
        stage=args.stage,
        modality=args.modality,
        fats=args.fat,
        slices=args.slices,
        device=args.device,
        force=args.force,
        like=args.like,
        discs=args.discs,
        slab_mm=args.slab_mm,
    )
    for path in result.files:
        print(path)
    return 0


def _export(args: argparse.Namespace) -> int:
    from nnsam2_utils.apply.export import export_model

    result = export_model(args.out, profile=args.profile, stage=args.stage, force=args.force)
    print(result.zip)
    print(result.card)
    return 0


def _discs(text: str) -> dict[str, int]:
    from nnsam2_utils.apply.inputs import parse_discs

    try:
        return parse_discs(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _slab_mm(text: str) -> float:
    from nnsam2_utils.evaluate.levels import check_half_width

    try:
        return check_half_width(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--slab-mm {text!r}: {exc}") from exc


def _add_apply(sub) -> None:
    """The ``predict`` and ``export`` subcommands (docs/method.md §13)."""
    from nnsam2_utils.apply.inputs import MODALITIES
    from nnsam2_utils.apply.model import STAGES
    from nnsam2_utils.evaluate.levels import SLAB_HALF_WIDTH_MM

    pred = sub.add_parser(
        "predict",
        help="segment new scans with a run's trained nnU-Net: labels on each scan's grid, measurements, overlays",
        description="Segment new scans (NIfTI, NRRD, MHA files or DICOM series folders) with the trained nnU-Net of "
        "a run profile. Writes OUT/<scan>_lpm.nii.gz (1 right, 2 left LPM, on the scan's own grid), "
        "OUT/<scan>_overlay.png, OUT/measurements.csv (and OUT/level_measurements.csv with --discs), "
        "OUT/provenance.json and the log OUT/predict.log.",
    )
    pred.add_argument("inputs", nargs="+", metavar="IN", help="scan files or DICOM series folders")
    pred.add_argument("-o", "--out", required=True, help="output folder (created if missing)")
    pred.add_argument("--profile", default="demo", help="the run profile whose model to use (default: demo)")
    pred.add_argument(
        "--stage",
        choices=STAGES,
        default="final",
        help="final: the profile's last nnU-Net; delivered: the one the run delivered for the dataset --like names",
    )
    pred.add_argument("--like", metavar="DATASET", help="with --stage delivered: the run dataset these scans are like")
    pred.add_argument("--modality", choices=MODALITIES, help="default: the DICOM header's, else CT if HU-like")
    pred.add_argument("--fat", nargs="+", metavar="FAT", help="Dixon fat images, one per scan in the same order")
    pred.add_argument("--slices", type=_slices, metavar="FIRST:LAST", help="segment these slices only (from 0)")
    pred.add_argument(
        "--discs",
        nargs="+",
        type=_discs,
        metavar="L3L4=K,L4L5=K,L5S1=K",
        help="disc slice numbers (from 0, as --slices), one list per scan in the same order: also measure CSA, fat "
        "ratio or HU per disc level into OUT/level_measurements.csv",
    )
    pred.add_argument(
        "--slab-mm",
        type=_slab_mm,
        default=SLAB_HALF_WIDTH_MM,
        metavar="MM",
        help=f"with --discs: average over the slices within ± MM of each disc (default {SLAB_HALF_WIDTH_MM:g}; 0: the "
        "disc slice only)",
    )
    pred.add_argument("--device", help="cpu or cuda (default: the profile's refine.device)")
    pred.add_argument("--force", action="store_true", help="replace existing outputs in OUT")
    pred.set_defaults(func=_predict)
    exp = sub.add_parser(
        "export",
        help="a run's trained nnU-Net as an nnU-Net v2 zip (nnUNetv2_install_pretrained_model_from_zip) + model card",
    )
    exp.add_argument("out", metavar="OUT.zip")
    exp.add_argument("--profile", default="demo")
    exp.add_argument("--stage", choices=STAGES, default="final", help="final: the profile's last nnU-Net")
    exp.add_argument("--force", action="store_true", help="replace an existing zip and model card")
    exp.set_defaults(func=_export)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nnsam2``."""
    parser = argparse.ArgumentParser(prog="nnsam2", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the synthetic demo cohort").add_subparsers(dest="action", required=True)
    gen = demo.add_parser("generate", help="write the demo cohort (NIfTI + manifests) into OUT")
    gen.add_argument("out")
    gen.add_argument("--size", choices=("tiny", "default"), default="default")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--datasets", nargs="*")
    gen.set_defaults(func=_generate)
    run = sub.add_parser("run", help="run the workflow of a profile (what `make book` does)")
    run.add_argument("--profile", default="demo")
    run.add_argument("--cores", type=int, default=2)
    run.add_argument("--dry-run", action="store_true")
    run.add_argument("target", nargs="?", default="book")
    run.set_defaults(func=_run)
    data = sub.add_parser("data", help="check or fetch a dataset described by a manifest").add_subparsers(
        dest="action", required=True
    )
    check = data.add_parser(
        "check", help="check a dataset: files, checksums, readability, geometry, labels, discs, annotation"
    )
    check.add_argument("manifest", nargs="*", help="data_manifest/<name>.yaml files")
    check.add_argument(
        "--profile", help="also check every manifest of this run profile and the checkpoint it names (SAM2)"
    )
    check.add_argument("--quick", action="store_true", help="presence and checksums only; read no image")
    check.add_argument("--no-checksums", action="store_true", help="skip the SHA-256 checks")
    check.set_defaults(func=_data_check)
    fetch = data.add_parser(
        "fetch", help="download a manifest's direct links (source.downloads); verifies checksums, never overwrites"
    )
    fetch.add_argument("manifest")
    fetch.set_defaults(func=_data_fetch)
    exe = sub.add_parser("execute", help="run one notebook with papermill; the output appears only on success")
    exe.add_argument("notebook")
    exe.add_argument("output")
    exe.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"))
    exe.set_defaults(func=_execute)
    _add_apply(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; nnsam2's own errors print one clear line and exit 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except Nnsam2Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
