"""The polar-vbll command line: help, a real zero-shot eval, finetune + compare, clear errors."""

import json
import subprocess
import sys

import pytest

from polar_vbll import cli


@pytest.mark.parametrize("command", [[], ["eval"], ["finetune"], ["compare"]])
def test_help_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(command + ["--help"])
    assert exit_info.value.code == 0
    assert "usage: polar-vbll" in capsys.readouterr().out


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "polar_vbll.cli", "--help"],
                            capture_output=True, text=True, check=True)
    assert "finetune" in result.stdout and "compare" in result.stdout


def test_eval_on_smollm2_writes_json(tmp_path, capsys):
    assert cli.main(["eval", "--task", "arc_easy", "--split", "validation", "--limit", "8",
                     "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "zero-shot smollm2-135m on arc_easy/validation (letter): ACC" in printed
    assert "zero-shot smollm2-135m on arc_easy/validation (cloze): ACC" in printed
    result = json.loads((tmp_path / "eval_arc_easy_validation.json").read_text())
    assert set(result["scorings"]) == {"letter", "cloze"} and len(result["labels"]) == 8
    for scoring in result["scorings"].values():
        assert scoring["metrics"]["n"] == 8 and len(scoring["probs"]) == 8


def test_finetune_and_compare_on_tiny(tmp_path, capsys):
    assert cli.main(["finetune", "--task", "arc_easy", "--method", "polar_vbll", "--model",
                     "tiny", "--profile", "smoke", "--out", str(tmp_path / "ft"),
                     "--no-progress"]) == 0
    assert (tmp_path / "ft" / "model" / "adapters.safetensors").is_file()
    assert (tmp_path / "ft" / "checkpoint" / "config.json").is_file()
    result = json.loads((tmp_path / "ft" / "result.json").read_text())
    assert len(result["history"]) == 4 and result["processes"] == 1
    assert cli.main(["finetune", "--task", "arc_easy", "--method", "mle", "--model", "tiny",
                     "--profile", "smoke", "--set", "steps=2", "--set", "learning_rate=2e-3",
                     "--out", str(tmp_path / "short"), "--no-progress"]) == 0
    short = json.loads((tmp_path / "short" / "result.json").read_text())
    assert len(short["history"]) == 2 and short["profile"]["learning_rate"] == 2e-3
    assert cli.main(["compare", "--task", "obqa", "--methods", "mle,polar_vbll", "--model",
                     "tiny", "--profile", "smoke", "--ood", "arc_challenge",
                     "--out", str(tmp_path / "cmp"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "polar_vbll   arc_challenge" in printed
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert set(results["methods"]) == {"mle", "polar_vbll"}
    assert set(results["methods"]["mle"]["metrics"]) == {"obqa", "arc_challenge"}
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert html.count("plotly-graph-div") >= 3
    assert results["head_form"] == "choice"  # the default of every profile
    assert cli.main(["compare", "--task", "arc_easy", "--methods", "temperature", "--model",
                     "tiny", "--profile", "smoke", "--head-form", "letter",
                     "--out", str(tmp_path / "letter"), "--no-progress"]) == 0
    letter = json.loads((tmp_path / "letter" / "results.json").read_text())
    assert letter["head_form"] == "letter"


@pytest.mark.parametrize("argv, message", [
    (["finetune", "--task", "arc_easy", "--method", "bogus"], "unknown method 'bogus'"),
    (["eval", "--task", "nope"], "unknown task 'nope'"),
    (["eval", "--task", "arc_easy", "--limit", "0"], "--limit must be a positive number"),
    (["compare", "--task", "arc_easy", "--methods", "mle", "--ood", "obqa"],
     "the OOD protocol trains on 'obqa' but --task is 'arc_easy'"),
    (["finetune", "--task", "arc_easy", "--method", "mle", "--resume"], "--resume needs --out"),
    (["finetune", "--task", "arc_easy", "--method", "mle", "--set", "stepz=3"],
     "--set 'stepz=3': expected FIELD=VALUE with FIELD one of"),
    (["compare", "--task", "arc_easy", "--methods", "mle", "--set", "steps"],
     "--set 'steps': expected FIELD=VALUE"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert cli.main(argv + ["--model", "tiny", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert cli.main(["eval", "--task", "arc_easy", "--limit", "2", "--model", "tiny",
                     "--out", str(blocker / "out"), "--no-progress"]) == 2
    assert "cannot create output folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["finetune", "--task", "arc_easy", "--method", "mle", "--profile", "gpu"],
     "profile 'gpu' was renamed: use 'full'"),
    (["checkpoints", "--profile", "cpu"], "profile 'cpu' was renamed: use 'course'"),
    (["eval", "--task", "arc_easy", "--profile", "huge"], "unknown profile 'huge'"),
])
def test_a_bad_profile_name_is_refused_with_the_profiles_to_use(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "['smoke', 'course', 'full']" in error and "Traceback" not in error
    assert message in error.strip().splitlines()[-1]  # the usage, then the error in one line
