# The nnsam2 workflow: each rule runs one notebook with papermill; the notebook calls one function of
# nnsam2_utils.steps (the same function a reader calls by hand). The book renders the executed notebooks.
#   snakemake --cores 2 --config profile=demo -- book
# Config keys: profile (config/<profile>.yaml, typed: nnsam2_utils.workflow.profile.RunProfile),
#              book (the book's folder: "book" for the demo profile; any other profile builds its own
#              book in work/<profile>/book, from a copy of book/ and docs/method.md, so two profiles' pages
#              never mix).
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from nnsam2_utils.data.io import read_yaml
from nnsam2_utils.workflow.book_toc import page_names, toc_for_pages, write_toc
from nnsam2_utils.workflow.code_deps import step_files, view_files
from nnsam2_utils.workflow.profile import config_dir, load_profile
from nnsam2_utils.workflow.session import own_manifests

PROFILE = config.get("profile", "demo")
OWN_BOOK = f"{os.environ.get('NNSAM2_WORK', 'work')}/{PROFILE}/book"
BOOK = config.get("book") or os.environ.get("NNSAM2_BOOK") or ("book" if PROFILE == "demo" else OWN_BOOK)
BOOK_SOURCES = ["intro.md", "methods.md", "stages.md", "_toc.yml", "_config.yml"]
P = load_profile(PROFILE)  # validated once: an unknown key or a wrong type stops here with the file and the key
PROFILE_FILE = str(config_dir() / f"{PROFILE}.yaml")
os.environ["NNSAM2_BOOK"] = os.path.abspath(BOOK)  # notebooks copy their tables and figures into the book
G = f"{BOOK}/generated"

DATASETS = P.generated_datasets + list(own_manifests(P))
STAGES = list(range(1, P.refine.stages + 1))
BASELINES = P.enabled_baselines
COMPARE = P.compared_backends  # stage 0 alone with other backends, for the results table
GPU_STAGE0 = 1 if P.propagation.device == "cuda" else 0
GPU_REFINE = 1 if P.refine.device == "cuda" else 0
# CPU threads of one nnU-Net job (refine.threads): one thread each lets nnU-Net 1 and the supervised bound
# train side by side on two cores, faster together than one after the other with two threads each.
TRAIN_THREADS = P.refine.threads or workflow.cores
WORK = f"{os.environ.get('NNSAM2_WORK', 'work')}/{PROFILE}"
REPEAT_DONE = f"{WORK}/repeat/dsc.csv"  # written last by steps.repeat_train
ENCODER_DONE = f"{WORK}/runlog/encoder__all.json"  # the step record of steps.encoder
OWN_SCANS_DONE = f"{WORK}/runlog/own_scans__example.json"  # the step record of steps.own_scans_example
NEW_SUBJECTS_DONE = f"{WORK}/new_subjects/dsc.csv"  # written last by steps.new_subjects
# the which-slice study's tables, each written last by its part (steps.which_slice_variants, steps.which_slice)
WHICH_SLICE_VARIANTS = f"{WORK}/which_slice/dsc.csv"
WHICH_SLICE_FINAL = f"{WORK}/which_slice/final_dsc.csv"

wildcard_constraints:
    dataset="|".join(DATASETS) or "(?!)",
    backend="litemedsam|sam2",


def res(step, **defaults):
    """A step's resources: the profile's ``resources.<step>`` entries over these defaults."""
    given = P.resources.get(step)
    return {**defaults, **(given.model_dump(exclude_none=True) if given else {})}


def code(step):
    """The helper modules a step's notebook uses (nnsam2_utils/workflow/code_deps.py)."""
    return [str(p) for p in step_files(step) + view_files(step)]


def notebook(name):
    return f"notebooks/{name}.ipynb"


# every job's torch (OMP) and SimpleITK threads: the job's {threads}, so parallel jobs do not oversubscribe the cores
THREAD_LIMITS = "OMP_NUM_THREADS={threads} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads}"
BIN = Path(sys.executable).parent  # the environment Snakemake runs in (.venv/bin)


def papermill(*parameters):
    """The shell command of a rule: its notebook run by papermill with the profile and ``parameters``.

    Every notebook runs under THREAD_LIMITS. Names and paths are shell-quoted.
    """
    extra = " ".join(f"-p {name} {{wildcards.{name}:q}}" if value is None else f"-p {name} {shlex.quote(str(value))}"
                     for name, value in parameters)
    return (f"{THREAD_LIMITS} {shlex.quote(str(BIN / 'nnsam2'))} execute -p profile {shlex.quote(PROFILE)} {extra} "
            "{input[0]:q} {output:q}")


def step_command(step, extra=""):
    """The shell command of a rule that runs a step without a page (nnsam2_utils/workflow/run_step.py)."""
    return (f"{THREAD_LIMITS} {shlex.quote(str(BIN / 'python'))} -m nnsam2_utils.workflow.run_step {step} "
            f"--profile {shlex.quote(PROFILE)} {extra}")


# The run's pages: optional ones only where the profile runs them (a profile's own book gets a toc cut to these).
PAGES = [
    f"{G}/04_results.ipynb",
    f"{G}/06_agreement.ipynb",
    f"{G}/07_teaching.ipynb",
    f"{G}/08_run_record.ipynb",
    *([f"{G}/09_own_scans.ipynb"] if P.own_scans_example else []),
    *([f"{G}/07_which_slice.ipynb"] if P.baselines.which_slice else []),
    f"{G}/00_cohort.ipynb",
    *expand(f"{G}/01_prepare_{{dataset}}.ipynb", dataset=DATASETS),
    *expand(f"{G}/02_stage0_{{dataset}}.ipynb", dataset=DATASETS),
    *expand(f"{G}/03_refine_{{stage}}.ipynb", stage=STAGES),
    *expand(f"{G}/05_{{baseline}}.ipynb", baseline=BASELINES),
]
PAGE_NAMES = page_names(PAGES, BOOK)
PROJECT_TOC = read_yaml("book/_toc.yml")
if Path(BOOK).resolve() == Path("book").resolve() and toc_for_pages(PROJECT_TOC, PAGE_NAMES) != PROJECT_TOC:
    raise WorkflowError(
        f"profile '{PROFILE}' leaves out pages that book/_toc.yml lists (a baseline or the example own-scans chapter "
        "switched off), so the project's book would not build: build it into its own book (leave out "
        "--config book=book and NNSAM2_BOOK; every profile other than demo gets work/<profile>/book)."
    )


rule book:
    input:
        PAGES,
        [f"{BOOK}/{name}" for name in BOOK_SOURCES],
        "docs/method.md" if Path(BOOK).resolve() == Path("book").resolve() else f"{BOOK}/../docs/method.md",
    output:
        f"{BOOK}/_build/html/index.html",
    shell:
        f"{shlex.quote(str(BIN / 'jupyter-book'))} build {shlex.quote(BOOK)} --quiet --keep-going -W"


if Path(BOOK).resolve() != Path("book").resolve():

    rule book_sources:
        """A profile's own book starts as a copy of the project's book sources and the method page; its toc lists
        only the pages this profile makes (nnsam2_utils/workflow/book_toc.py)."""
        input:
            [f"book/{name}" for name in BOOK_SOURCES],
            "docs/method.md",
            PROFILE_FILE,
        output:
            [f"{BOOK}/{name}" for name in BOOK_SOURCES],
            f"{BOOK}/../docs/method.md",
        run:
            import shutil

            for source, target in zip(input, output):
                if Path(source).name == "_toc.yml":
                    write_toc(source, target, PAGE_NAMES)
                else:
                    shutil.copyfile(source, target)


onstart:
    # A real run (not a dry run) of a profile whose data or checkpoint is missing stops here with the list.
    from nnsam2_utils.workflow.preflight import missing_for_profile

    _missing = missing_for_profile(PROFILE)
    if _missing:
        raise WorkflowError(f"profile '{PROFILE}' cannot start; missing:\n  " + "\n  ".join(_missing))


rule encoder:
    """Stage 0's model built once (LiteMedSAM's encoder exported to OpenVINO) beside the cohort, before any
    dataset's stage 0 needs it."""
    input:
        code("stage0"),
    output:
        ENCODER_DONE,
    priority: 50
    resources:
        gpu=GPU_STAGE0,
    shell:
        step_command("encoder")


rule own_scans_example:
    """The example chapter's dataset: it needs nothing of the run but stage 0's model, and runs when a core is free."""
    input:
        ENCODER_DONE,
        code("own_scans"),
    output:
        OWN_SCANS_DONE,
    priority: 5
    resources:
        gpu=GPU_STAGE0,
    shell:
        step_command("own_scans_example")


rule own_scans:
    """The example chapter's page: it also shows where this run's labels landed and what the run cost, so it runs
    after the run record (its example dataset, rule own_scans_example, is read back)."""
    input:
        notebook("09_own_scans"),
        OWN_SCANS_DONE,
        f"{G}/08_run_record.ipynb",
        code("own_scans"),
    output:
        f"{G}/09_own_scans.ipynb",
    priority: 20
    shell:
        papermill()


rule cohort:
    input:
        notebook("00_cohort"),
        PROFILE_FILE,
        code("cohort"),
    priority: 50  # the critical path first (cohort -> prepare -> stage 0 -> nnU-Nets -> pages), side jobs after
    output:
        f"{G}/00_cohort.ipynb",
    shell:
        papermill()


rule prepare:
    input:
        notebook("01_prepare"),
        f"{G}/00_cohort.ipynb",
        code("prepare"),
    priority: 40
    output:
        f"{G}/01_prepare_{{dataset}}.ipynb",
    shell:
        papermill(("dataset", None))


rule stage0:
    input:
        notebook("02_stage0"),
        f"{G}/01_prepare_{{dataset}}.ipynb",
        ENCODER_DONE,
        code("stage0"),
    priority: 30
    output:
        f"{G}/02_stage0_{{dataset}}.ipynb",
    resources:
        gpu=GPU_STAGE0,
        **res("stage0", mem_mb=4000, runtime=60),
    shell:
        papermill(("dataset", None))


rule stage0_compare:
    input:
        notebook("02_stage0"),
        f"{G}/01_prepare_{{dataset}}.ipynb",
        code("stage0"),
    priority: 30
    output:
        f"{G}/02_stage0_{{dataset}}__{{backend}}.ipynb",
    resources:
        gpu=GPU_STAGE0,
        **res("stage0", mem_mb=4000, runtime=60),
    shell:
        papermill(("dataset", None), ("backend", None))


def refine_inputs(wildcards):
    return stage_inputs(int(wildcards.stage))


def stage_inputs(stage):
    """The pages a refinement stage needs first: every stage-0 page (stage 1), else the previous stage's page."""
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
    threads: TRAIN_THREADS
    priority: 30  # the critical path (nnU-Net 1 -> 2 -> 3 -> repeat): before the baselines when cores are short
    resources:
        gpu=GPU_REFINE,
        **res("refine", mem_mb=8000, runtime=120),
    shell:
        papermill(("stage", None))


rule oneshot_dataset:
    """One dataset's one-shot baselines, as soon as its stage 0 is done (the page, rule oneshot, reads them)."""
    input:
        f"{G}/02_stage0_{{dataset}}.ipynb",
        code("oneshot"),
    output:
        f"{WORK}/registration/{{dataset}}/dsc.csv",
        f"{WORK}/threshold/{{dataset}}/dsc.csv",
    priority: 5
    shell:
        step_command("oneshot_dataset", "--dataset {wildcards.dataset:q}")


rule oneshot:
    input:
        notebook("05_oneshot"),
        expand(f"{WORK}/{{baseline}}/{{dataset}}/dsc.csv", baseline=("registration", "threshold"), dataset=DATASETS),
        code("oneshot"),
    output:
        f"{G}/05_oneshot.ipynb",
    priority: 20
    shell:
        papermill()


rule repeat_train:
    """The final stage trained again with the next seed: it needs only the previous stage's labels, so it runs
    beside the final stage; its page (rule repeat) compares the two once both exist."""
    input:
        stage_inputs(STAGES[-1]),
        code("repeat"),
    output:
        REPEAT_DONE,
    threads: TRAIN_THREADS
    priority: 20
    resources:
        gpu=GPU_REFINE,
        **res("refine", mem_mb=8000, runtime=120),
    shell:
        step_command("repeat_train")


rule repeat:
    input:
        notebook("05_repeat"),
        f"{G}/03_refine_{STAGES[-1]}.ipynb",
        REPEAT_DONE,
        code("repeat"),
    output:
        f"{G}/05_repeat.ipynb",
    priority: 20
    shell:
        papermill()


rule supervised:
    input:
        notebook("05_supervised"),
        expand(f"{G}/01_prepare_{{dataset}}.ipynb", dataset=DATASETS),
        code("supervised"),
    priority: 10  # long: started first on the core the chain leaves free
    output:
        f"{G}/05_supervised.ipynb",
    threads: TRAIN_THREADS
    resources:
        gpu=GPU_REFINE,
        **res("supervised", mem_mb=8000, runtime=120),
    shell:
        papermill()


rule new_subjects:
    """The final nnU-Net on a fresh draw of the generated datasets (subjects the run never saw): it needs the final
    model alone, so it runs beside the baselines; the results page reads it back."""
    input:
        f"{G}/03_refine_{STAGES[-1]}.ipynb",
        code("new_subjects"),
    output:
        NEW_SUBJECTS_DONE,
    priority: 20
    resources:
        gpu=GPU_REFINE,
    shell:
        step_command("new_subjects")


rule results:
    input:
        notebook("04_results"),
        expand(f"{G}/03_refine_{{stage}}.ipynb", stage=STAGES),
        [NEW_SUBJECTS_DONE] if P.generated_datasets else [],  # a run of the user's own data alone draws none
        expand(f"{G}/05_{{baseline}}.ipynb", baseline=BASELINES),
        expand(f"{G}/02_stage0_{{dataset}}__{{backend}}.ipynb", dataset=DATASETS, backend=COMPARE),
        code("results"),
    priority: 20
    output:
        f"{G}/04_results.ipynb",
    shell:
        papermill()


rule agreement:
    input:
        notebook("06_agreement"),
        f"{G}/04_results.ipynb",
        code("agreement"),
    priority: 20
    output:
        f"{G}/06_agreement.ipynb",
    shell:
        papermill()


rule teaching:
    input:
        notebook("07_teaching"),
        f"{G}/04_results.ipynb",
        code("teaching"),
    priority: 20
    output:
        f"{G}/07_teaching.ipynb",
    shell:
        papermill()


rule which_slice_variants:
    """Which slice to annotate, its stage 0: stage 0 again on one dataset per annotated slice and reference, each scan
    encoded once (docs/method.md §10.6); it needs only the stage-0 pages. On the job's cores (two threads: half the
    time for the same core-seconds, which keeps the chapter within its two minutes)."""
    input:
        expand(f"{G}/02_stage0_{{dataset}}.ipynb", dataset=DATASETS),
        ENCODER_DONE,
        code("which_slice"),
    output:
        WHICH_SLICE_VARIANTS,
    threads: workflow.cores
    priority: 5
    resources:
        gpu=GPU_STAGE0,
    shell:
        step_command("which_slice_variants")


if P.baselines.which_slice_epochs:

    rule which_slice_nnunet:
        """Which slice to annotate, its nnU-Nets: one per variant, trained side by side on the job's cores."""
        input:
            WHICH_SLICE_VARIANTS,
            code("which_slice"),
        output:
            WHICH_SLICE_FINAL,
        threads: workflow.cores  # its processes: one torch thread each (steps/which_slice.py)
        resources:
            gpu=GPU_REFINE,
        shell:
            step_command("which_slice")


rule which_slice:
    """The Which-slice page: reads the study back, beside the run's own nnU-Net 1."""
    input:
        notebook("07_which_slice"),
        WHICH_SLICE_FINAL if P.baselines.which_slice_epochs else WHICH_SLICE_VARIANTS,
        f"{G}/03_refine_1.ipynb",
        code("which_slice"),
    output:
        f"{G}/07_which_slice.ipynb",
    threads: 1
    shell:
        papermill()


rule run_record:
    input:
        notebook("08_run_record"),
        f"{G}/04_results.ipynb",
        f"{G}/06_agreement.ipynb",
        f"{G}/07_teaching.ipynb",
        code("results"),
    priority: 20
    output:
        f"{G}/08_run_record.ipynb",
    shell:
        papermill()
