"""What a notebook costs, read from the walkthrough benchmark's JSON (``benchmarks/measured``).

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
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [row["notebook"][:2], _minutes(row["loaded"]), _bracket(row["live_estimate"]),
                 _bracket(row["notebook_estimate"]),
                 *[_minutes(s) if s is not None else "not measured" for s in row["gpu"].values()]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["device_name", "time_rows", "time_table", "walkthrough_records"]
