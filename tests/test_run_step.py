"""Steps run without a page (nnsam2_utils.workflow.run_step): the Snakefile's side jobs."""

import pytest

from nnsam2_utils.workflow import run_step


def test_every_step_it_runs_is_a_step_function():
    from nnsam2_utils import steps

    assert set(run_step.STEPS) <= set(steps.__all__)
    assert all(callable(getattr(steps, name)) for name in run_step.STEPS)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["oneshot_dataset"], "--dataset is needed by step oneshot_dataset"),
        (["repeat_train", "--dataset", "word_ct"], "--dataset is not taken by step repeat_train"),
        (["prepare"], "invalid choice: 'prepare'"),
    ],
)
def test_a_wrong_call_is_refused_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_step.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_unknown_profile_is_an_error_naming_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NNSAM2_CONFIG_DIR", str(tmp_path))
    assert run_step.main(["repeat_train", "--profile", "nosuchprofile"]) == 2
    assert "nosuchprofile" in capsys.readouterr().err
