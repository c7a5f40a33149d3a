"""One function per workflow step: the Snakefile's rules and the notebooks call these, nothing else.

Each step owns its run key (what it depends on), its output folder and its step record (time, memory,
parameters), and returns what its notebook shows. Order of the method (docs/method.md):

====================  =========================================  ==========================
step                  function                                   writes under work/<profile>
====================  =========================================  ==========================
cohort                :func:`cohort`                             ``data/``
prepare               :func:`prepare` (per dataset)              ``prepared/<dataset>/``
stage 0               :func:`encoder`, :func:`stage0` (per d.)   ``work/_models/``, ``stage0/<dataset>/``
stages 1-3            :func:`refine` (per stage)                 ``nnunet<k>/``
supervised bound      :func:`supervised`                         ``supervised/``
one-shot baselines    :func:`oneshot_dataset`, :func:`oneshot`   ``registration/``, ``threshold/``
repeat                :func:`repeat_train`, :func:`repeat`       ``repeat/``, ``tables/repeatability.csv``
new subjects          :func:`new_subjects`                       ``new_subjects/``
results               :func:`results`                            ``tables/dsc.csv``
deliver               :func:`deliver`                            ``delivered/``, ``tables/quality.csv``
measure, agreement    :func:`measure`, :func:`agreement`         ``tables/measurements.csv``, ``agreement.csv``
own scans (example)   :func:`own_scans_example`                  ``own_scans/``
which slice           :func:`which_slice_variants`,              ``which_slice/``
                      :func:`which_slice`
====================  =========================================  ==========================
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for readers and type checkers; at run time each step is imported on first use
    from nnsam2_utils.steps.agreement import agreement, measure
    from nnsam2_utils.steps.cohort import cohort
    from nnsam2_utils.steps.deliver import deliver
    from nnsam2_utils.steps.new_subjects import new_subjects
    from nnsam2_utils.steps.oneshot import oneshot, oneshot_dataset
    from nnsam2_utils.steps.own_scans import own_scans_example
    from nnsam2_utils.steps.prepare import prepare, prepare_manifest
    from nnsam2_utils.steps.refine import refine
    from nnsam2_utils.steps.repeat import repeat, repeat_train
    from nnsam2_utils.steps.results import results
    from nnsam2_utils.steps.stage0 import encoder, propagate_manifest, stage0
    from nnsam2_utils.steps.supervised import supervised
    from nnsam2_utils.steps.which_slice import which_slice, which_slice_variants

#: step function → the module that defines it (imported on first use: a page imports only its own step's code)
_MODULES = {
    "agreement": "agreement",
    "cohort": "cohort",
    "deliver": "deliver",
    "encoder": "stage0",
    "measure": "agreement",
    "new_subjects": "new_subjects",
    "oneshot": "oneshot",
    "oneshot_dataset": "oneshot",
    "own_scans_example": "own_scans",
    "prepare": "prepare",
    "prepare_manifest": "prepare",
    "propagate_manifest": "stage0",
    "refine": "refine",
    "repeat": "repeat",
    "repeat_train": "repeat",
    "results": "results",
    "stage0": "stage0",
    "supervised": "supervised",
    "which_slice": "which_slice",
    "which_slice_variants": "which_slice",
}


class _StepsModule(types.ModuleType):
    """This package: ``steps.<name>`` is always the step function, imported on first use.

    A step's function and its module share a name (``steps.prepare``); importing the submodule would
    otherwise replace the function by the module on this package.
    """

    def __getattribute__(self, name: str):
        if name in _MODULES:
            return getattr(importlib.import_module(f"nnsam2_utils.steps.{_MODULES[name]}"), name)
        return super().__getattribute__(name)

    def __dir__(self) -> list[str]:
        return sorted(__all__)


sys.modules[__name__].__class__ = _StepsModule

__all__ = [
    "deliver",
    "encoder",
    "agreement",
    "cohort",
    "measure",
    "new_subjects",
    "oneshot",
    "oneshot_dataset",
    "own_scans_example",
    "prepare",
    "prepare_manifest",
    "propagate_manifest",
    "refine",
    "repeat",
    "repeat_train",
    "results",
    "stage0",
    "supervised",
    "which_slice",
    "which_slice_variants",
]
