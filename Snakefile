# The nnsam2 workflow: papermill runs each notebook per (dataset, stage); the book renders them.
#   snakemake --cores 2 --config profile=demo -- book
# Config keys: profile (config/<profile>.yaml), book (the book source folder, default "book").
import os
import sys
from pathlib import Path

import yaml

PROFILE = config.get("profile", "demo")
BOOK = config.get("book", "book")
CONFIG_DIR = os.environ.get("NNSAM2_CONFIG_DIR", "config")  # where profiles are read (nnsam2_utils.config)
P = yaml.safe_load(open(f"{CONFIG_DIR}/{PROFILE}.yaml"))
os.environ["NNSAM2_BOOK"] = os.path.abspath(BOOK)  # notebooks copy their tables and figures into the book
WORK = os.environ.get("NNSAM2_WORK", "work")
W = f"{WORK}/{PROFILE}"
G = f"{BOOK}/generated"

COHORT = P.get("cohort") or {}
DATASETS = list(COHORT.get("datasets") or []) if COHORT.get("generate") else []
DATASETS += [yaml.safe_load(open(m, encoding="utf-8"))["name"] for m in P.get("manifests") or []]
STAGES = list(range(1, int((P.get("refine") or {}).get("stages", 1)) + 1))
BASELINES = [name for name, on in (P.get("baselines") or {}).items() if on]
RESOURCES = P.get("resources") or {}  # per step: mem_mb, runtime (minutes); the cluster profile uses them
PROPAGATION = P.get("propagation") or {}
# stage 0 alone with other backends than the profile's, for the results table (02_stage0_<dataset>__<backend>)
COMPARE = [b for b in PROPAGATION.get("compare_backends") or [] if b != PROPAGATION.get("backend", "litemedsam")]

wildcard_constraints:
    dataset="|".join(DATASETS) or "(?!)",
    backend="litemedsam|sam2",


def res(step, **defaults):
    """A step's resources: the profile's ``resources.<step>`` entries over these defaults."""
    return {**defaults, **(RESOURCES.get(step) or {})}
from nnsam2_utils.steps import step_files, view_files


def code(step):
    """The helper modules a step's notebook uses (see nnsam2_utils/steps.py)."""
    return [str(p) for p in step_files(step) + view_files(step)]


BIN = Path(sys.executable).parent  # the environment Snakemake runs in (.venv/bin)
# Every notebook runs with OMP_NUM_THREADS (torch) and ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS (SimpleITK)
# set to {threads}: each uses the cores Snakemake gave the job, so
# parallel jobs (stage 0 of two datasets) do not oversubscribe the cores; training rules take them all.
PM = f"{BIN}/nnsam2 execute -p profile {PROFILE}"


def notebook(name):
    return f"notebooks/{name}.ipynb"


rule book:
    input:
        f"{G}/04_results.ipynb",
        f"{G}/06_agreement.ipynb",
        f"{G}/07_teaching.ipynb",
        f"{G}/08_run_record.ipynb",
        f"{G}/09_own_scans.ipynb",
        f"{G}/00_cohort.ipynb",
        expand(f"{G}/01_prepare_{{dataset}}.ipynb", dataset=DATASETS),
        expand(f"{G}/02_stage0_{{dataset}}.ipynb", dataset=DATASETS),
        expand(f"{G}/03_refine_{{stage}}.ipynb", stage=STAGES),
        expand(f"{G}/05_{{baseline}}.ipynb", baseline=BASELINES),
        sorted(str(p) for p in Path(BOOK).glob("*.md")),
        f"{BOOK}/_toc.yml",
        f"{BOOK}/_config.yml",
    output:
        f"{BOOK}/_build/html/index.html",
    shell:
        f"{BIN}/jupyter-book build {BOOK} --quiet --keep-going -W"


onstart:
    # A real run (not a dry run) of a profile whose data or checkpoint is missing stops here with the list.
    from nnsam2_utils.datacheck import missing_for_profile
    from snakemake.exceptions import WorkflowError

    _missing = missing_for_profile(PROFILE)
    if _missing:
        raise WorkflowError(f"profile '{PROFILE}' cannot start; missing:\n  " + "\n  ".join(_missing))


rule own_scans:
    input:
        notebook("09_own_scans"),
        code("own_scans"),
    output:
        f"{G}/09_own_scans.ipynb",
    resources:
        gpu=1 if (P.get("propagation") or {}).get("device") == "cuda" else 0,
    shell:
        "OMP_NUM_THREADS={threads} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads} {PM} {input[0]} {output}"


rule cohort:
    input:
        notebook("00_cohort"),
        f"{CONFIG_DIR}/{PROFILE}.yaml",
        code("cohort"),
    output:
        f"{G}/00_cohort.ipynb",
    shell:
        "OMP_NUM_THREADS={threads} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads} {PM} {input[0]} {output}"


rule prepare:
    input:
        notebook("01_prepare"),
        f"{G}/00_cohort.ipynb",
        code("prepare"),
    output:
        f"{G}/01_prepare_{{dataset}}.ipynb",
    shell:
        "OMP_NUM_THREADS={threads} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads} {PM} -p dataset {wildcards.dataset} {input[0]} {output}"


rule stage0:
    input:
        notebook("02_stage0"),
        f"{G}/01_prepare_{{dataset}}.ipynb",
        code("stage0"),
    output:
        f"{G}/02_stage0_{{dataset}}.ipynb",
    resources:
        gpu=1 if (P.get("propagation") or {}).get("device") == "cuda" else 0,
        **res("stage0", mem_mb=4000, runtime=60),
    shell:
        "OMP_NUM_THREADS={threads} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads} {PM} -p dataset {wildcards.dataset} {input[0]} {output}"


rule stage0_compare:
    input:
        notebook("02_stage0"),
        f"{G}/01_prepare_{{dataset}}.ipynb",
        code("stage0"),
    output:
        f"{G}/02_stage0_{{dataset}}__{{backend}}.ipynb",
    resources:
        gpu=1 if PROPAGATION.get("device") == "cuda" else 0,
        **res("stage0", mem_mb=4000, runtime=60),
    shell:
        "OMP_NUM_THREADS={threads} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads} {PM} -p dataset {wildcards.dataset} "
        "-p backend {wildcards.backend} {input[0]} {output}"


def refine_inputs(wildcards):
    stage = int(wildcards.stage)
    if stage == 1:
        return expand(f"{G}/02_stage0_{{dataset}}.ipynb", dataset=DATASETS)
    return [f"{G}/03_refine_{stage - 1}.ipynb"]


rule refine:
    input:
        notebook("03_refine"),
        refine_inputs,
        code("refine"),
    output:
        f"{G}/03_refine_{{stage}}.ipynb",
    threads: workflow.cores
    resources:
        gpu=1 if (P.get("refine") or {}).get("device") == "cuda" else 0,
        **res("refine", mem_mb=8000, runtime=120),
    shell:
        "OMP_NUM_THREADS={threads} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads} {PM} -p stage {wildcards.stage} {input[0]} {output}"


rule oneshot:
    input:
        notebook("05_oneshot"),
        expand(f"{G}/02_stage0_{{dataset}}.ipynb", dataset=DATASETS),
        code("oneshot"),
    output:
        f"{G}/05_oneshot.ipynb",
    shell:
        "OMP_NUM_THREADS={threads} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads} {PM} {input[0]} {output}"


rule repeat:
    input:
        notebook("05_repeat"),
        f"{G}/03_refine_{STAGES[-1]}.ipynb",
        code("repeat"),
    output:
        f"{G}/05_repeat.ipynb",
    threads: workflow.cores
    resources:
        gpu=1 if (P.get("refine") or {}).get("device") == "cuda" else 0,
        **res("refine", mem_mb=8000, runtime=120),
    shell:
        "OMP_NUM_THREADS={threads} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads} {PM} {input[0]} {output}"


rule supervised:
    input:
        notebook("05_supervised"),
        expand(f"{G}/01_prepare_{{dataset}}.ipynb", dataset=DATASETS),
        code("supervised"),
    output:
        f"{G}/05_supervised.ipynb",
    threads: workflow.cores
    resources:
        gpu=1 if (P.get("refine") or {}).get("device") == "cuda" else 0,
        **res("supervised", mem_mb=8000, runtime=120),
    shell:
        "OMP_NUM_THREADS={threads} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads} {PM} {input[0]} {output}"


rule results:
    input:
        notebook("04_results"),
        expand(f"{G}/03_refine_{{stage}}.ipynb", stage=STAGES),
        expand(f"{G}/05_{{baseline}}.ipynb", baseline=BASELINES),
        expand(f"{G}/02_stage0_{{dataset}}__{{backend}}.ipynb", dataset=DATASETS, backend=COMPARE),
        code("results"),
    output:
        f"{G}/04_results.ipynb",
    shell:
        "OMP_NUM_THREADS={threads} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads} {PM} {input[0]} {output}"


rule agreement:
    input:
        notebook("06_agreement"),
        f"{G}/04_results.ipynb",
        code("agreement"),
    output:
        f"{G}/06_agreement.ipynb",
    shell:
        "OMP_NUM_THREADS={threads} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads} {PM} {input[0]} {output}"


rule teaching:
    input:
        notebook("07_teaching"),
        f"{G}/04_results.ipynb",
        code("teaching"),
    output:
        f"{G}/07_teaching.ipynb",
    shell:
        "OMP_NUM_THREADS={threads} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads} {PM} {input[0]} {output}"


rule run_record:
    input:
        notebook("08_run_record"),
        f"{G}/04_results.ipynb",
        f"{G}/06_agreement.ipynb",
        f"{G}/07_teaching.ipynb",
        code("results"),
    output:
        f"{G}/08_run_record.ipynb",
    shell:
        "OMP_NUM_THREADS={threads} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads} {PM} {input[0]} {output}"
