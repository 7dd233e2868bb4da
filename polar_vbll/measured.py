"""What the committed benchmark runs measured, read from their JSON (``benchmarks/measured``).

Every script in ``benchmarks/`` prints one JSON object; the runs worth keeping are saved in
``benchmarks/measured`` and the book's tables are built from them here, so a figure it shows is
the measured one. :func:`benchmark_table` gives one row per saved run (its ratios, its target,
whether it was met).

``benchmarks/bench_walkthrough.py`` measures, per notebook, the whole notebook with its fine-tunes
loaded (what a CPU learner waits for), its live fine-tune where it was run, and the FLOPs of that
fine-tune, from which a GPU that is not here (a Colab T4) is estimated. The README's time table and
the book's GPU page are built from those files by the functions here, so a stated time is always
the measured one. The folder lives in the repository, not in the installed package: callers pass
it (``<repository>/benchmarks/measured``).
"""

from __future__ import annotations

import json
from pathlib import Path

from polar_vbll.errors import ConfigError

PROFILE = "course"  # the README states the course profile's times


def walkthrough_records(folder: str | Path) -> list[dict]:
    """Every ``walkthrough_*.json`` in ``folder``, in name order (ConfigError if there is none)."""
    folder = Path(folder)
    paths = sorted(folder.glob("walkthrough_*.json"))
    if not paths:
        raise ConfigError(f"{folder}: no walkthrough_*.json; run benchmarks/bench_walkthrough.py "
                          "and save its output there")
    records = []
    for path in paths:
        try:
            record = json.loads(path.read_text())
            record["measurements"]["notebooks"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise ConfigError(f"{path}: not a walkthrough benchmark result ({error})") from None
        records.append({**record, "path": path.name})
    return records


def device_name(record: dict) -> str:
    machine = record["machine"]
    if machine["device"].startswith("cuda"):
        return machine.get("gpu", machine["device"])
    return f"CPU, {machine['cpu_count']} cores"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _bracket(estimate: dict) -> str:
    low, high = sorted(estimate.values())
    return f"{low / 60:.1f}-{high / 60:.1f} min"


def time_rows(folder: str | Path, profile: str = PROFILE) -> list[dict]:
    """One row per notebook at ``profile``: the loaded notebook on this project's CPU, the T4
    estimates of its live fine-tune and of the whole notebook (a low-high bracket over the assumed
    efficiencies), and every GPU's measured whole notebook (None where not measured)."""
    rows: dict[str, dict] = {}
    gpus: list[str] = []
    for record in walkthrough_records(folder):
        if record["measurements"].get("profile") != profile:
            continue
        gpu = record["machine"]["device"].startswith("cuda")
        if gpu and device_name(record) not in gpus:
            gpus.append(device_name(record))
        for number, entry in record["measurements"]["notebooks"].items():
            row = rows.setdefault(number, {"notebook": entry["notebook"], "gpu": {}})
            if gpu and "notebook_run" in entry:
                row["gpu"][device_name(record)] = entry["notebook_run"]["seconds"]
            elif not gpu and "loaded_run" in entry and "notebook_estimate" in entry:
                row.update(cpu=device_name(record), loaded=entry["loaded_run"]["seconds"],
                           live_estimate=entry["estimate"],
                           notebook_estimate=entry["notebook_estimate"],
                           live_flops=entry["live_flops"])
    if not any("loaded" in row for row in rows.values()):
        raise ConfigError(f"{folder}: no CPU walkthrough at the {profile} profile with the loaded "
                          "notebooks and the FLOPs (bench_walkthrough.py --parts loaded,flops)")
    for row in rows.values():
        row["gpu"] = {name: row["gpu"].get(name) for name in gpus}
    return [rows[number] for number in sorted(rows)]


def time_table(folder: str | Path, profile: str = PROFILE) -> str:
    """The README's table of :func:`time_rows` (markdown)."""
    rows = [row for row in time_rows(folder, profile) if "loaded" in row]
    gpus = list(rows[0]["gpu"])
    header = ["notebook", f"{rows[0]['cpu']}, runs loaded", "T4 (est.): live fine-tune",
              "T4 (est.): notebook", *[f"{gpu}, measured" for gpu in gpus]]
    return _markdown(header, [[row["notebook"][:2], _minutes(row["loaded"]), _bracket(row["live_estimate"]),
                               _bracket(row["notebook_estimate"]),
                               *[_minutes(s) if s is not None else "not measured" for s in row["gpu"].values()]]
                              for row in rows])


# --------------------------------------------------------------------------- every benchmark


def benchmark_records(folder: str | Path) -> list[dict]:
    """Every saved benchmark result in ``folder`` except the walkthrough's (its own tables, above),
    in name order; ConfigError naming the file that is not one."""
    folder = Path(folder)
    records = []
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("walkthrough_"):
            continue
        try:
            record = json.loads(path.read_text())
            for key in ("name", "machine", "date", "command", "ratios", "target", "met"):
                record[key]
            if not isinstance(record.get("headline", {}), dict):
                raise TypeError("'headline' must be an object {figure: value}")
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise ConfigError(f"{path}: not a benchmark result (expected the JSON object a "
                              f"benchmarks/ script prints; {error!r})") from None
        records.append({**record, "path": path.name})
    if not records:
        raise ConfigError(f"{folder}: no saved benchmark results (*.json)")
    return records


def _ratio_name(key: str) -> str:
    return key.replace("_over_", " / ")


def _ratio_figures(key: str, value, unit: str | None = None) -> list[tuple[str, str, str]]:
    """(figure, value, paired spread) of one entry of a run's ``ratios``: a ratio of medians with
    the paired median [min-max], a median over runs, a number, or a group of them."""
    unit = ("x" if "_over_" in key else "") if unit is None else unit
    if isinstance(value, (int, float)):
        return [(_ratio_name(key), f"{value:.3g}{unit}", "")]
    if "ratio_of_medians" in value:
        return [(_ratio_name(key), f"**{value['ratio_of_medians']:.2f}x**",
                 f"{value['paired_median']:.2f} [{value['paired_min']:.2f}-{value['paired_max']:.2f}]")]
    if "median_over_runs" in value:
        return [(_ratio_name(key), f"**{value['median_over_runs']:.3g}{unit}**", "")]
    return [(f"{_ratio_name(key)}: {name}", number, spread) for inner_key, inner in value.items()
            for name, number, spread in _ratio_figures(inner_key, inner, unit)]


def _operator_figures(record: dict) -> list[tuple[str, str, str]]:
    """The tensor operators of the two sides of each ``a_over_b`` ratio, where the run counted
    them (a launch-bound GPU's time ratio follows the operator ratio)."""
    measurements = record.get("measurements", {})
    counts = next((measurements[key] for key in ("operators_per_step", "operators_per_call")
                   if key in measurements), {})
    figures = []
    for key in record["ratios"]:
        numerator, _, denominator = key.partition("_over_")
        if counts.get(numerator) and counts.get(denominator):
            figures.append((f"{_ratio_name(key)}, operators",
                            f"{counts[numerator] / counts[denominator]:.2f}x", ""))
    return figures


def benchmark_rows(folder: str | Path) -> list[dict]:
    """One row per saved benchmark run: its file, command, machine, date, target, verdict and
    figures, (figure, value, paired spread) each: its ``headline`` (absolute figures), its ratios,
    the operator ratios."""
    rows = []
    for record in benchmark_records(folder):
        figures = [(name, value, "") for name, value in record.get("headline", {}).items()]
        figures += [figure for key, value in record["ratios"].items() for figure in _ratio_figures(key, value)]
        rows.append({"file": record["path"], "command": record["command"], "machine": device_name(record),
                     "date": record["date"][:10], "figures": figures + _operator_figures(record),
                     "target": record["target"],
                     "met": {True: "met", False: "**missed**", None: "-"}[record["met"]]})
    return rows


def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in body]
    return "\n".join(lines)


def benchmark_table(folder: str | Path) -> str:
    """The book's view of :func:`benchmark_rows` (markdown): a narrow summary of every saved run
    (where, when, verdict), then a section per run with its command, its target and its figures
    (the paired column only where the run has paired ratios)."""
    rows = benchmark_rows(folder)
    parts = [_markdown(["saved run", "measured on", "target met?"],
                       [[f"[`{_stem(row)}`](#{_stem(row)})", f"{row['machine']}, {row['date']}",
                         row["met"]]
                        for row in rows])]
    for row in rows:
        verdict = "" if row["met"] == "-" else f" Verdict: {row['met']}."
        paired = any(spread for _, _, spread in row["figures"])
        header = ["figure", "value"] + (["paired: median [min-max]"] if paired else [])
        parts += [f"### {_stem(row)}",
                  f"`{row['command'].removeprefix('benchmarks/')}` on {row['machine']}, "
                  f"{row['date']}.\nTarget: {row['target']}.{verdict}",
                  _markdown(header, [list(figure[:len(header)]) for figure in row["figures"]])]
    return "\n\n".join(parts)


def _stem(row: dict) -> str:
    return row["file"].removesuffix(".json")


__all__ = ["benchmark_records", "benchmark_rows", "benchmark_table", "device_name", "time_rows",
           "time_table", "walkthrough_records"]
