"""Run one workflow step without a page: ``python -m nnsam2_utils.workflow.run_step STEP --profile P``.

For the steps whose work is split from their page so that it can start earlier in the workflow: stage 0's model
(the OpenVINO export) is built beside the cohort, the example own-scans dataset runs when a core is free (its page
reads the whole run, so it comes last), the repeat's
training runs beside the final stage (its page compares once both exist), each dataset's one-shot baselines
start when its stage 0 is done (their page reads them back), the which-slice study's stage 0 and its
trainings (side by side) run before its page, which also waits for nnU-Net 1, and the final model's scores on new
subjects run beside the baselines (the results page reads them back). Logs go to
``work/<profile>/logs/steps.log``; the exit status is 0 on success, 2 on nnsam2's own errors.
"""

from __future__ import annotations

import argparse
import logging
import sys

from nnsam2_utils.errors import Nnsam2Error

#: steps that may run without their page (functions of nnsam2_utils.steps); those in PER_DATASET take --dataset
STEPS = (
    "encoder",
    "own_scans_example",
    "repeat_train",
    "oneshot_dataset",
    "which_slice_variants",
    "which_slice",
    "new_subjects",
)
PER_DATASET = ("oneshot_dataset",)


def main(argv: list[str] | None = None) -> int:
    """Run the named step of a profile's run."""
    parser = argparse.ArgumentParser(prog="python -m nnsam2_utils.workflow.run_step", description=__doc__)
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--dataset", help=f"the dataset of a per-dataset step ({', '.join(PER_DATASET)})")
    args = parser.parse_args(argv)
    if (args.step in PER_DATASET) != bool(args.dataset):
        parser.error(f"--dataset is {'needed' if args.step in PER_DATASET else 'not taken'} by step {args.step}")
    from nnsam2_utils import steps
    from nnsam2_utils.workflow.session import start

    try:
        run = start(args.profile, args.work_dir, log_name="steps.log")
        function = getattr(steps, args.step)
        function(run, args.dataset) if args.dataset else function(run)
    except Nnsam2Error as exc:
        logging.getLogger(__name__).error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
