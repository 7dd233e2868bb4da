"""The calibration benchmarks on the committed course-tier checkpoints (``--committed``): they read
what the checkpoints recorded, and score further test questions with the loaded methods. And the
shared-prompt benchmark at the smoke tier: both of its sides compute the same scores."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from polar_vbll import data, metrics, run_store
from polar_vbll.profiles import get_profile
from polar_vbll.runs import Run

ROOT = Path(__file__).resolve().parents[1]


def bench(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def committed(name: str) -> run_store.Fitted:
    path, reasons = run_store.find(Run(name, "arc_easy", get_profile("course")))
    assert path is not None, reasons
    return run_store.load(path)


def test_calibration_benchmark_reads_the_committed_checkpoints():
    row = bench("bench_calibration.py", "--committed", "--bootstrap", "200")["measurements"][0]
    for name in ("mle", "polar_vbll"):
        recorded = committed(name).metrics["arc_easy"]
        assert row[name]["questions"] == get_profile("course").test_examples
        assert row[name]["ece"] == pytest.approx(recorded["ece"], abs=1e-9)
        assert row[name]["nll"] == pytest.approx(recorded["nll"], abs=1e-9)
        floor = row[name]["ece_noise_floor"]
        assert floor["p05"] < floor["mean"] < floor["p95"] and 0.02 < floor["mean"] < 0.09
    boot = row["ece_ratio_bootstrap"]
    assert boot["p2_5"] <= boot["value"] <= boot["p97_5"]
    assert boot["value"] == pytest.approx(row["polar_vbll"]["ece"] / row["mle"]["ece"])


def test_calibration_benchmark_scores_questions_the_checkpoints_did_not_record():
    recorded = get_profile("course").test_examples
    row = bench("bench_calibration.py", "--committed", "--test-questions", str(recorded + 6),
                "--bootstrap", "0")["measurements"][0]
    fitted = committed("mle")
    questions = data.load_task("arc_easy", "test", limit=recorded + 6)
    # the recorded 500 plus the 6 the loaded method predicts now (the last 8 re-predicted here:
    # 2 recorded, 6 new, so the reloaded method is checked against its own record as well)
    tail = fitted.method.predict(questions[recorded - 2:])
    torch.testing.assert_close(tail["probs"][:2].float(),
                               fitted.records["arc_easy"]["probs"][-2:].float(), atol=1e-5, rtol=0)
    probs = torch.cat([fitted.records["arc_easy"]["probs"].float(), tail["probs"][2:].float()])
    labels = torch.tensor([q.label for q in questions])
    assert row["mle"]["questions"] == recorded + 6
    assert row["mle"]["ece"] == pytest.approx(metrics.expected_calibration_error(probs, labels),
                                              abs=1e-6)
    assert row["mle"]["nll"] == pytest.approx(metrics.negative_log_likelihood(probs, labels),
                                              abs=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--committed", "--test-questions", "abc"], "expected a number of questions >= 1 or 'all', got 'abc'"),
    (["--committed", "--test-questions", "0"], "got '0'"),
    (["--test-questions", "5"], "--test-questions applies to --committed only"),
])
def test_calibration_benchmark_rejects_a_bad_question_count(args, message):
    done = subprocess.run([sys.executable, "benchmarks/bench_calibration.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode != 0 and message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
@pytest.mark.parametrize("device, message", [
    ("cuda", "--device 'cuda': CUDA is not available on this machine"),
    ("gpu0", "--device 'gpu0': expected cpu or cuda"),
])
def test_benchmarks_reject_a_device_they_cannot_use(device, message):
    done = subprocess.run([sys.executable, "benchmarks/bench_train_step.py", "--device", device],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert done.returncode != 0 and message in done.stderr
    assert "Traceback" not in done.stderr


def test_shared_prompt_benchmark_compares_like_with_like():
    result = bench("bench_shared_prompts.py", "--profile", "smoke", "--repeats", "1",
                   "--layers", "2", "--method", "mle")
    tokens = result["measurements"]["tokens"]["K=2"]
    assert tokens["row_tokens"] <= tokens["padded_tokens"] and tokens["rows"] >= 8
    assert tokens["shared_tokens"] < tokens["row_tokens"]  # each prompt ran once, not per choice
    assert result["measurements"]["max_score_difference"]["K=2"] < 1e-4
    assert set(result["measurements"]["seconds_per_step"]) == {"K=2 whole", "K=2 shared"}
    assert result["ratios"]["K=2 whole_over_shared"]["ratio_of_medians"] > 0


def test_the_walkthrough_benchmark_times_the_runs_the_notebooks_mark_live(bench_walkthrough):
    """bench_walkthrough.LIVE names, per notebook, the run its live=True fit_or_load trains."""
    numbers = sorted(path.name[:2] for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    assert sorted(bench_walkthrough.LIVE) == numbers  # every notebook, none left out
    for number, (method, task, ood) in bench_walkthrough.LIVE.items():
        source = bench_walkthrough.notebook_path(number).with_suffix(".py").read_text()
        end = source.find("resume_folder=LIVE_RUNS")
        assert end > 0, f"notebook {number} has no live fine-tune"
        call = source[source.rfind("fit_or_load(", 0, end) - 200:end + 120]
        assert f'"{method}"' in call and "live=" in call, (number, method, call)
        assert f'"{task}"' in call, (number, task, call)
        assert ("OOD_PROTOCOL" in call) == ood, (number, call)


def test_the_walkthrough_counts_the_flops_of_a_whole_live_fine_tune():
    """Smoke profile, notebook 06's live run (OBQA and its OOD sets): FLOPs and operators of one
    step, FLOPs of the rest of the run, and the T4 estimate made of them."""
    measured = bench("bench_walkthrough.py", "--profile", "smoke", "--notebooks", "06",
                     "--parts", "flops")["measurements"]
    row, steps = measured["notebooks"]["06"], get_profile("smoke").steps
    assert row["fixed_flops"] > row["flops_per_step"] > 0
    assert row["live_flops"] == row["fixed_flops"] + (steps - 1) * row["flops_per_step"]
    assert measured["efficiencies"] == [0.05, 0.2] and row["operators_per_step"] > 100
    for efficiency, seconds in row["estimate"].items():
        rate = measured["estimated_peak_flops"] * float(efficiency)
        step = max(row["flops_per_step"] / rate,
                   row["operators_per_step"] * measured["operator_seconds"])
        assert seconds == pytest.approx(row["fixed_flops"] / rate + (steps - 1) * step)


@pytest.mark.parametrize("args, message", [
    (["--notebooks", "07"], "--notebooks '07'"), (["--parts", "coffee"], "--parts 'coffee'"),
    (["--profile", "cpu"], "profile 'cpu' was renamed")])
def test_the_walkthrough_benchmark_rejects_bad_arguments_in_one_line(args, message):
    done = subprocess.run([sys.executable, "benchmarks/bench_walkthrough.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr


def test_inference_benchmark_counts_the_passes_of_each_side():
    """One round at the smoke profile: what each side's prediction runs (its timing is the
    benchmark's business, not a test's)."""
    measured = bench("bench_inference.py", "--profile", "smoke", "--sides", "vbll_mc,tfb",
                     "--repeats", "1", "--examples", "2", "--samples", "3")["measurements"]
    assert measured["backbone_passes"] == {"vbll_mc": 1, "tfb": 3}
    assert measured["sequences_per_question"]["tfb"] == pytest.approx(
        3 * measured["sequences_per_question"]["vbll_mc"])
    # three backbone passes launch about three times the operators of one
    assert measured["operators_per_call"]["tfb"] > 2.5 * measured["operators_per_call"]["vbll_mc"]


def test_every_benchmark_script_is_described_in_the_benchmarks_readme():
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    scripts = sorted(path.name for path in (ROOT / "benchmarks").glob("bench_*.py"))
    assert [name for name in scripts if f"| `{name}` |" not in readme] == []


def test_the_colab_install_benchmark_installs_what_the_install_cell_does(bench_colab_install):
    """The model pin it times is the one the notebooks' install cell and `make setup` install."""
    model = bench_colab_install.model_requirement()
    assert model in (ROOT / "Makefile").read_text()
    for source in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        assert f'"{model}"' in source.read_text(), f"{source.name}'s install cell pins another model"
    here = bench_colab_install.installed(Path(sys.executable))
    assert here["torch"] == torch.__version__ and "polar-vbll" in here


def test_the_readme_states_the_measured_colab_install():
    record = json.loads((ROOT / "benchmarks" / "measured" / "colab_install_cpu.json").read_text())
    assert record["met"], record["notes"]
    stated = re.search(r"measured\s+([\d.]+) s \+ ([\d.]+) s for the model", (ROOT / "README.md").read_text())
    assert stated, "the README's Colab bullet no longer states the measured install"
    measured = [record["measurements"][key]["median"] for key in ("package_seconds", "model_seconds")]
    assert [float(value) for value in stated.groups()] == [round(value, 1) for value in measured]


def test_the_training_step_benchmark_compares_precisions_side_by_side():
    """--precisions: every side in each format; float16 adds its casts and the loss scaler's
    operators and host read, so its step launches more than float32's."""
    result = bench("bench_train_step.py", "--device", "cpu", "--sides", "polar_landing",
                   "--precisions", "fp32,fp16", "--repeats", "1", "--batch", "1", "--tokens", "64")
    operators = result["measurements"]["operators_per_step"]
    reads = result["measurements"]["host_reads_per_step"]
    assert set(operators) == {"polar_landing@fp32", "polar_landing@fp16"}
    assert operators["polar_landing@fp16"] > operators["polar_landing@fp32"]
    assert reads["polar_landing@fp16"] > reads["polar_landing@fp32"]
    assert result["ratios"]["polar_landing@fp16_over_polar_landing@fp32"]["ratio_of_medians"] > 0
    done = subprocess.run([sys.executable, "benchmarks/bench_train_step.py", "--precisions", "fp8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "--precisions 'fp8': expected a subset of" in done.stderr
    assert "Traceback" not in done.stderr
