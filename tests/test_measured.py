"""The README's and the book's notebook times are the walkthrough benchmark's measurements."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from polar_vbll import measured, run_store
from polar_vbll.errors import ConfigError
from polar_vbll.profiles import get_profile

REPO = Path(__file__).resolve().parents[1]
MEASURED = REPO / "benchmarks" / "measured"


def test_every_notebook_has_a_measured_cpu_time_and_a_t4_estimate():
    rows = {row["notebook"]: row for row in measured.time_rows(MEASURED)}
    notebooks = {path.stem for path in (REPO / "notebooks").glob("[0-9][0-9]_*.py")}
    assert notebooks <= set(rows), f"not measured: {sorted(notebooks - set(rows))}"
    for name in notebooks:
        row = rows[name]
        assert row["loaded"] > 0 and row["live_flops"] > 0, name
        for efficiency, seconds in row["live_estimate"].items():
            # a whole notebook is the loaded notebook measured here plus the live estimate
            assert row["notebook_estimate"][efficiency] == pytest.approx(row["loaded"] + seconds)


def test_the_t4_estimate_is_the_stated_formula_of_the_counted_flops_and_operators():
    record = json.loads((MEASURED / "walkthrough_cpu_course.json").read_text())["measurements"]
    steps = get_profile(record["profile"]).steps
    for entry in record["notebooks"].values():
        assert entry["live_flops"] == entry["fixed_flops"] + (steps - 1) * entry["flops_per_step"]
        for efficiency, seconds in entry["estimate"].items():
            rate = record["estimated_peak_flops"] * float(efficiency)
            step = max(entry["flops_per_step"] / rate,
                       entry["operators_per_step"] * record["operator_seconds"])
            assert seconds == pytest.approx(entry["fixed_flops"] / rate + (steps - 1) * step)


def test_the_table_states_each_row_in_minutes():
    table = measured.time_table(MEASURED)
    lines = table.splitlines()
    assert len(lines) == 2 + len(list((REPO / "notebooks").glob("[0-9][0-9]_*.py")))
    row = measured.time_rows(MEASURED)[0]
    assert f"| {row['loaded'] / 60:.1f} min |" in lines[2]


def test_a_broken_or_missing_measurement_gets_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no walkthrough_"):
        measured.time_rows(tmp_path)
    broken = tmp_path / "walkthrough_cpu_course.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="walkthrough_cpu_course.json: not a walkthrough"):
        measured.time_rows(tmp_path)
    assert broken.read_text() == "{not json"  # nothing lost
    broken.unlink()
    smoke = json.loads((MEASURED / "walkthrough_cpu_smoke.json").read_text())
    (tmp_path / "walkthrough_cpu_smoke.json").write_text(json.dumps(smoke))
    with pytest.raises(ConfigError, match="no CPU walkthrough at the course profile"):
        measured.time_rows(tmp_path)


def test_a_gpu_measurement_adds_a_column(tmp_path):
    for path in MEASURED.glob("walkthrough_*.json"):
        shutil.copy(path, tmp_path)
    record = json.loads(next(tmp_path.glob("walkthrough_cpu_course.json")).read_text())
    record["machine"].update(device="cuda:0", gpu="NVIDIA H100 80GB HBM3")
    for entry in record["measurements"]["notebooks"].values():
        entry["notebook_run"] = {"seconds": 90.0}
    (tmp_path / "walkthrough_cuda_course.json").write_text(json.dumps(record))
    table = measured.time_table(tmp_path)
    assert "NVIDIA H100 80GB HBM3, measured" in table.splitlines()[0]
    assert all(line.endswith("| 1.5 min |") for line in table.splitlines()[2:])


# "the notebook takes about 2 minutes" / "takes under a minute": the whole notebook, runs loaded
NOTEBOOK_CLAIM = re.compile(r"takes (?:about (\d+(?:\.\d+)?) minutes|(under a minute))")
# "(about 5 minutes on 2 cores)", "about 5 minutes each on 2 CPU cores": one course fine-tune
FINE_TUNE_CLAIM = re.compile(r"(?<!takes )about (\d+(?:\.\d+)?) minutes(?: each)? on 2 (?:CPU )?cores")


def _prose(number: str) -> str:
    """The markdown of notebook ``number`` (its .py source's comment lines), one line."""
    path = next((REPO / "notebooks").glob(f"{number}_*.py"))
    lines = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
    return " ".join(lines)


def _agrees(minutes: float | None, seconds: float) -> bool:
    """"about N minutes" holds within max(0.5, N / 4) minutes; None stands for "under a minute"."""
    if minutes is None:
        return seconds < 60
    return abs(seconds / 60 - minutes) <= max(0.5, minutes / 4)


def test_the_times_the_notebooks_state_are_the_measured_ones(bench_walkthrough):
    """Each notebook's stated time is the walkthrough's measurement of it with its runs loaded
    (2 cores), and its stated CPU fine-tune time is the committed run's fit of the
    configuration it trains live (the ones it retrains take as long: the same profile)."""
    loaded = {row["notebook"][:2]: row["loaded"] for row in measured.time_rows(MEASURED)}
    course = get_profile("course")
    for number in sorted(bench_walkthrough.LIVE):
        prose = _prose(number)
        claims = NOTEBOOK_CLAIM.findall(prose)
        assert len(claims) == 1, f"notebook {number} states its time {len(claims)} times: {claims}"
        minutes = None if claims[0][1] else float(claims[0][0])
        assert _agrees(minutes, loaded[number]), (
            f"notebook {number} says it takes {claims[0][0] or 'under a'} minute(s); measured "
            f"{loaded[number]:.0f} s (benchmarks/measured/walkthrough_cpu_course.json)")
        path, reasons = run_store.find(bench_walkthrough.live_run(course, number))
        assert path is not None, reasons
        fit = json.loads((path / "run.json").read_text())["fit_seconds"]
        for stated in FINE_TUNE_CLAIM.findall(prose):
            assert _agrees(float(stated), fit), (
                f"notebook {number} says a course fine-tune takes about {stated} minutes on 2 "
                f"cores; the committed {path.name} took {fit:.0f} s")


@pytest.mark.parametrize("minutes, seconds, holds", [
    (None, 59, True), (None, 61, False), (2, 110, True), (1.5, 135, False), (5, 363, True),
    (5, 400, False), (2, 95, True), (2, 85, False)])
def test_about_n_minutes_allows_a_quarter_and_at_least_half_a_minute(minutes, seconds, holds):
    assert _agrees(minutes, seconds) is holds


# --------------------------------------------------------------------------- every saved benchmark


def test_the_benchmark_table_has_a_row_per_saved_run_with_its_ratios_and_verdict():
    saved = sorted(p for p in MEASURED.glob("*.json") if not p.name.startswith("walkthrough_"))
    rows = measured.benchmark_rows(MEASURED)
    assert [row["file"] for row in rows] == [p.name for p in saved]
    for path, row in zip(saved, rows):
        record = json.loads(path.read_text())
        assert row["met"] == {True: "met", False: "**missed**", None: "-"}[record["met"]]
        values = [value for _, value, _ in row["figures"]]
        for key, value in record["ratios"].items():
            if isinstance(value, dict) and "ratio_of_medians" in value:
                assert f"**{value['ratio_of_medians']:.2f}x**" in values, (path.name, key)
        for figure, value in record.get("headline", {}).items():
            assert (figure, value, "") in row["figures"], (path.name, figure)
    table = measured.benchmark_table(MEASURED)
    assert all(f"| [`{path.stem}`](#{path.stem}) |" in table for path in saved)  # the summary
    for path, row in zip(saved, rows):  # a section per run: command, target, figures
        section = table.split(f"### {path.stem}\n\n", 1)[1].split("\n### ", 1)[0]
        assert row["command"].removeprefix("benchmarks/") in section and row["target"] in section
        assert all(f"| {figure} | {value} |" in section for figure, value, _ in row["figures"])


def test_operator_ratios_are_those_of_the_counted_sides(tmp_path):
    record = json.loads((MEASURED / "train_step_cpu_course.json").read_text())
    (tmp_path / "train_step.json").write_text(json.dumps(record))
    counts = record["measurements"]["operators_per_step"]
    (row,) = measured.benchmark_rows(tmp_path)
    expected = counts["polar_landing"] / counts["lora"]
    assert ("polar_landing / lora, operators", f"{expected:.2f}x", "") in row["figures"]


def test_a_file_that_is_not_a_benchmark_result_is_named(tmp_path):
    (tmp_path / "walkthrough_cpu.json").write_text("{}")  # the walkthrough's own tables read it
    with pytest.raises(ConfigError, match="no saved benchmark results"):
        measured.benchmark_rows(tmp_path)
    (tmp_path / "notes.json").write_text('{"name": "x"}')
    with pytest.raises(ConfigError, match=r"notes\.json: not a benchmark result .*'machine'"):
        measured.benchmark_table(tmp_path)
    record = json.loads((MEASURED / "train_step_cpu_course.json").read_text())
    (tmp_path / "notes.json").write_text(json.dumps({**record, "headline": ["1.0 s"]}))
    with pytest.raises(ConfigError, match=r"notes\.json: .*'headline' must be an object"):
        measured.benchmark_rows(tmp_path)
