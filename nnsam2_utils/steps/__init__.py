"""One function per workflow step: the Snakefile's rules and the notebooks call these, nothing else.

Each step owns its run key (what it depends on), its output folder and its step record (time, memory,
parameters), and returns what its notebook shows. Order of the method (docs/method.md):

====================  =========================================  ==========================
step                  function                                   writes under work/<profile>
====================  =========================================  ==========================
cohort                :func:`cohort`                             ``data/``
prepare               :func:`prepare` (per dataset)              ``prepared/<dataset>/``
stage 0               :func:`stage0` (per dataset)               ``stage0/<dataset>/``
stages 1-3            :func:`refine` (per stage)                 ``nnunet<k>/``
supervised bound      :func:`supervised`                         ``supervised/``
one-shot baselines    :func:`oneshot`                            ``registration/``, ``threshold/``
repeat                :func:`repeat`                             ``repeat/``, ``tables/repeatability.csv``
results               :func:`results`                            ``tables/dsc.csv``
deliver               :func:`deliver`                            ``delivered/``, ``tables/quality.csv``
measure, agreement    :func:`measure`, :func:`agreement`         ``tables/measurements.csv``, ``agreement.csv``
own scans (example)   :func:`own_scans_example`                  ``own_scans/``
====================  =========================================  ==========================
"""

from nnsam2_utils.steps.agreement import agreement, measure
from nnsam2_utils.steps.cohort import cohort
from nnsam2_utils.steps.deliver import deliver
from nnsam2_utils.steps.oneshot import oneshot
from nnsam2_utils.steps.own_scans import own_scans_example
from nnsam2_utils.steps.prepare import prepare, prepare_manifest
from nnsam2_utils.steps.refine import refine
from nnsam2_utils.steps.repeat import repeat
from nnsam2_utils.steps.results import results
from nnsam2_utils.steps.stage0 import propagate_manifest, stage0
from nnsam2_utils.steps.supervised import supervised

__all__ = [
    "deliver",
    "agreement",
    "cohort",
    "measure",
    "oneshot",
    "own_scans_example",
    "prepare",
    "prepare_manifest",
    "propagate_manifest",
    "refine",
    "repeat",
    "results",
    "stage0",
    "supervised",
]
