"""Plugins failing at run time: a sampler or fatal logger that raises ends the run with a
checkpoint of the last complete step and a message naming the plugin (exit 1), and
``--resume`` continues it exactly; a non-fatal logger is dropped; a verifier that raises
costs its samples their reward (counted in ``verifier_errors``), not the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from srpo import registry
from srpo.cli import main
from tests.support import faults as harness
from tests.support.flaky_plugins import make_distribution

pytestmark = pytest.mark.skipif(
    not (harness.MODEL / "config.json").exists(), reason="tiny model not built"
)


@pytest.fixture
def flaky(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(make_distribution(tmp_path / "dist")))
    registry.refresh()
    yield
    registry.refresh()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("plugin-faults")


def config(tmp_path: Path, **changes: object) -> tuple[Path, Path]:
    out = tmp_path / "run"
    cfg = harness.small_config(out, steps_per_epoch=4, **{"checkpoint.every": 2, **changes})
    return harness.write(cfg, tmp_path / "run.yaml"), out


def reference(workdir: Path) -> tuple[list[dict], dict]:
    return harness.reference(
        harness.small_config(workdir / "unused", steps_per_epoch=4, **{"checkpoint.every": 2}),
        workdir,
    )


def test_sampler_failure_checkpoints_last_step_then_resume_is_exact(
    flaky, tmp_path, workdir, monkeypatch, capsys
):
    # no periodic checkpoints: the one written at the failure is all there is
    path, out = config(tmp_path, **{"sampler.name": "flaky", "checkpoint.every": 0})
    monkeypatch.setenv("FLAKY_SAMPLER_FAIL_AT", "6")
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after transformers' load bar)
    assert "sampler FlakySampler failed: RuntimeError: inference server went away" in err
    assert "the checkpoint of step 5 is saved: rerun with --resume" in err
    assert harness.check_checkpoints(out) == [5]
    end = harness.metrics(out)[-1]  # the log keeps why, not only that, the run failed
    assert end["status"] == "failed" and "inference server went away" in end["error"]
    monkeypatch.delenv("FLAKY_SAMPLER_FAIL_AT")
    assert main(["run", str(path), "--resume"]) == 0, capsys.readouterr().err
    ref_metrics, ref_history = reference(workdir)
    assert harness.first_difference(ref_metrics, harness.comparable(harness.metrics(out))) is None
    harness.check_history(out, ref_history)


def test_fatal_logger_failure_checkpoints_then_resume_is_exact(
    flaky, tmp_path, workdir, monkeypatch, capsys
):
    path, out = config(tmp_path, loggers=[{"name": "jsonl"}, {"name": "flaky"}])
    monkeypatch.setenv("FLAKY_LOGGER_FAIL_AT", "2")
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "logger FlakyLogger failed on StepEnd: OSError: disk full" in err, err
    assert "the checkpoint of step 3 is saved" in err
    assert harness.metrics(out)[-1]["status"] == "failed"
    assert "OSError: disk full" in harness.metrics(out)[-1]["error"]
    monkeypatch.delenv("FLAKY_LOGGER_FAIL_AT")
    assert main(["run", str(path), "--resume"]) == 0, capsys.readouterr().err
    ref_metrics, ref_history = reference(workdir)
    assert harness.first_difference(ref_metrics, harness.comparable(harness.metrics(out))) is None
    harness.check_history(out, ref_history)


def test_non_fatal_logger_failure_is_dropped(flaky, tmp_path, workdir, monkeypatch, capsys):
    path, out = config(tmp_path, loggers=[{"name": "jsonl"}, {"name": "flaky", "fatal": False}])
    monkeypatch.setenv("FLAKY_LOGGER_FAIL_AT", "1")
    assert main(["run", str(path)]) == 0
    assert "srpo: warning: logger FlakyLogger failed on StepEnd and is disabled: disk full" in (
        capsys.readouterr().err
    )
    ref_metrics, _ = reference(workdir)
    assert harness.first_difference(ref_metrics, harness.comparable(harness.metrics(out))) is None


def test_verifier_raising_costs_rewards_not_the_run(flaky, tmp_path, monkeypatch):
    path, out = config(tmp_path, verifiers={"math": {"name": "flaky"}})
    monkeypatch.setenv("FLAKY_VERIFIER_FAIL_AT", "3")  # call 1 is the held-out eval
    assert main(["run", str(path)]) == 0
    steps = [r for r in harness.metrics(out) if r["kind"] == "step"]
    assert [r["verifier_errors"] for r in steps] == [0, 32, 0, 0, 0, 0, 0, 0]
    assert steps[1]["reward/mean"] == 0 and steps[1]["accuracy"] == 0
    from srpo.history import FLAG_VERIFIER_ERROR

    rec = harness.history_records(out)
    flagged = (rec["flags"] & FLAG_VERIFIER_ERROR) != 0
    assert set(rec["step"][flagged].tolist()) == {1} and flagged.sum() == 32


def test_preflight_errors_point_at_the_option_before_anything_runs(flaky, tmp_path, capsys):
    """``Plugin.preflight`` runs at validation: an ``OptionError`` is reported at the option's
    line of the run file (exit 2); a plugin's own bug there names the plugin, no traceback."""
    path, out = config(tmp_path, loggers=[{"name": "picky", "options": {"needs": {"file": "x"}}}])
    lines = path.read_text().splitlines()
    line = next(i for i, x in enumerate(lines, 1) if x.strip().startswith("file:"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"srpo: error: {path}:{line}: loggers.0.options.needs.file: "
        "'x': no such file beside the run file"
    )
    assert main(["run", str(path)]) == 2 and not out.exists()
    (tmp_path / "x").write_text("")
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()

    path, _ = config(tmp_path, loggers=[{"name": "buggy_preflight"}])
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("srpo: error: logger plugin 'buggy_preflight': preflight check failed")
    assert "Traceback" not in err and len(err.splitlines()) == 1
