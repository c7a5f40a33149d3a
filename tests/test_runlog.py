import json

from nnsam2_utils.workflow import runlog


def test_step_record_writes_seconds_memory_and_versions(tmp_path):
    with runlog.step_record(tmp_path, "prepare", "ds", {"a": 1}) as extra:
        extra["reference_case"] = "c1"
    record = json.loads((tmp_path / "prepare__ds.json").read_text(encoding="utf-8"))
    assert record["seconds"] >= 0 and record["peak_mb"] > 0
    assert record["parameters"] == {"a": 1} and record["reference_case"] == "c1"
    assert record["packages"]["numpy"] != "not installed"
    table = runlog.timings_table(tmp_path)
    assert table.columns.tolist() == ["step", "dataset", "seconds", "peak_mb"] and len(table) == 1


def test_a_failed_step_writes_no_record_only_its_partial_time(tmp_path):
    import time

    try:
        with runlog.step_record(tmp_path, "stage0", "ds"):
            time.sleep(0.1)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert [p.name for p in tmp_path.iterdir()] == [runlog.PARTIAL]
    assert (
        runlog.earlier_seconds(tmp_path / runlog.PARTIAL / "stage0__ds.json", runlog.attempt_identity({}, None)) >= 0.1
    )
    assert runlog.timings_table(tmp_path).empty  # the run record lists finished steps only


def test_a_killed_step_s_time_is_counted_when_the_same_work_resumes(tmp_path):
    """A step killed mid-way (SIGKILL: no clean-up runs) left its elapsed time from its heartbeat; the attempt that
    finishes the same work (same run key) records both parts. Another key (the folder was recomputed) or, without a
    key, other parameters start from zero."""
    import subprocess
    import sys
    import time

    script = (
        "import time\n"
        "from nnsam2_utils.workflow.runlog import step_record\n"
        f"with step_record({str(tmp_path)!r}, 'nnunet1_train', 'pooled', {{'epochs': 3}}, key='k1', heartbeat_s=0.1):\n"
        "    time.sleep(120)\n"
    )
    partial = tmp_path / runlog.PARTIAL / "nnunet1_train__pooled.json"
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if partial.is_file() and json.loads(partial.read_text(encoding="utf-8"))["seconds"] >= 1.0:
                break
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    killed = json.loads(partial.read_text(encoding="utf-8"))["seconds"]
    assert killed >= 1.0 and not (tmp_path / "nnunet1_train__pooled.json").exists()
    with runlog.step_record(tmp_path, "nnunet1_train", "pooled", {"epochs": 3}, key="k1"):
        time.sleep(0.2)
    path = tmp_path / "nnunet1_train__pooled.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["resumed_after_s"] == killed and record["seconds"] >= killed + 0.2
    assert not partial.exists()  # finished: the partial time is in the record
    runlog._write_partial(partial, runlog.attempt_identity({"epochs": 3}, "k1"), killed)
    with runlog.step_record(tmp_path, "nnunet1_train", "pooled", {"epochs": 3}, key="k2"):
        pass  # a recomputed folder: the killed attempt's work is gone, so is its time
    assert "resumed_after_s" not in json.loads(path.read_text(encoding="utf-8"))
    runlog._write_partial(partial, runlog.attempt_identity({"size": 1}, None), 5.0)
    assert runlog.earlier_seconds(partial, runlog.attempt_identity({"size": 2}, None)) == 0.0
    assert runlog.earlier_seconds(partial, runlog.attempt_identity({"size": 1}, None)) == 5.0


def test_claim_folder_resumes_same_key_and_clears_stale_outputs(tmp_path):
    folder = tmp_path / "stage0"
    key = runlog.run_key({"backend": "litemedsam"})
    assert runlog.claim_folder(folder, key) is False
    (folder / "case1.nii.gz").write_text("finished work")
    assert runlog.claim_folder(folder, key) is True
    assert (folder / "case1.nii.gz").exists()
    other = runlog.run_key({"backend": "sam2"})
    assert other != key
    assert runlog.claim_folder(folder, other) is False
    assert not (folder / "case1.nii.gz").exists()


def test_run_key_follows_upstream_keys(tmp_path):
    upstream = tmp_path / "prepared"
    runlog.claim_folder(upstream, "k1")
    first = runlog.run_key({"x": 1}, [upstream])
    runlog.claim_folder(upstream, "k2")
    assert runlog.run_key({"x": 1}, [upstream]) != first


def test_step_code_fingerprints_depend_only_on_their_modules():
    from nnsam2_utils.workflow import code_deps as steps

    prepare_files = {p.name for p in steps.step_files("prepare")}
    assert {"dataset.py", "model_input.py", "geometry.py"} <= prepare_files and "nnunet.py" not in prepare_files
    assert "litemedsam.py" in {p.name for p in steps.step_files("stage0")}
    assert runlog.code_fingerprint("prepare") != runlog.code_fingerprint("refine")
    assert set(steps.STEP_CODE) >= {"cohort", "prepare", "stage0", "refine", "results"}


def test_page_presentation_code_is_not_part_of_any_run_key():
    """Editing how a page is executed and shown (workflow/notebook.py) re-runs notebooks, never recomputes a step."""
    from nnsam2_utils.workflow import code_deps

    for step in code_deps.STEP_CODE:
        keyed = {p.relative_to(code_deps.PACKAGE).as_posix() for p in code_deps.step_files(step)}
        assert "workflow/notebook.py" not in keyed and "workflow/preflight.py" not in keyed, step
        assert {"workflow/runlog.py", "workflow/profile.py", "workflow/session.py"} <= keyed, step
        assert "workflow/notebook.py" in {
            p.name and p.relative_to(code_deps.PACKAGE).as_posix() for p in code_deps.view_files(step)
        }


def test_a_read_back_keeps_the_record_of_the_work(tmp_path):
    """A page executed again only reads finished work back: with ``reuse`` the existing record (and the time the
    work took) stays; without a record, or without ``reuse``, the block's own time is written."""
    import json
    import time

    with runlog.step_record(tmp_path, "nnunet1_train", "pooled", {"epochs": 2}, reuse=True) as extra:
        time.sleep(0.2)  # no record yet: this one is written even with reuse
        extra["note"] = "trained"
    path = tmp_path / "nnunet1_train__pooled.json"
    first = json.loads(path.read_text(encoding="utf-8"))
    assert first["seconds"] >= 0.2 and first["note"] == "trained"
    with runlog.step_record(tmp_path, "nnunet1_train", "pooled", {"epochs": 2}, reuse=True) as extra:
        extra["note"] = "read back"
    assert json.loads(path.read_text(encoding="utf-8")) == first
    with runlog.step_record(tmp_path, "nnunet1_train", "pooled", {"epochs": 2}) as extra:
        pass
    again = json.loads(path.read_text(encoding="utf-8"))
    assert again["seconds"] < 0.2 and "note" not in again
