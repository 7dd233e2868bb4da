"""The course's results, read from the committed runs: tables for the book, the README and notebooks.

Every number that the README or the book states about a committed fine-tune comes from here, so
it cannot drift from the runs in ``polar_vbll/trained/``. Nothing is trained or re-predicted:
the metrics, fit times and stable ranks are the ones each run recorded in its ``run.json``, and the
ECE noise floor, mean confidence, selective prediction (AURC, accuracy at 80% coverage) and the
out-of-distribution AUROC are computed from its stored predictions (:mod:`polar_vbll.uncertainty`).

    python -m polar_vbll.results                 # print the tables (markdown)
    python -m polar_vbll.results --readme README.md          # rewrite the README's tables (and
                                                             # book/benchmarks.md's, beside it)
    python -m polar_vbll.results --readme README.md --check  # exit 1 if one differs from the runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from polar_vbll import metrics, run_store, uncertainty
from polar_vbll.runs import COMMITTED_TIER, Run
from polar_vbll.errors import ConfigError

ID_TASK, OOD_TRAIN_TASK = "arc_easy", "obqa"
BENCHMARKS_PAGE = Path("book") / "benchmarks.md"  # its table of saved benchmark runs is generated too
# The README's headline table: the zero-shot start, the deterministic fine-tunes, PoLAR-VBLL and the
# baselines that calibrate after training; methods without a committed run are left out.
HEADLINE_METHODS = ("zero_shot", "mle", "polar", "polar_vbll", "temperature", "laplace", "blob", "tfb")
SHORT_NAMES = {"arc_challenge": "ARC-C", "arc_easy": "ARC-E", "obqa": "OBQA",
               "mmlu_college_chemistry": "MMLU c-chem", "mmlu_college_physics": "MMLU c-phys",
               "mmlu_high_school_physics": "MMLU hs-phys"}


@dataclass(frozen=True)
class CommittedRun:
    """One committed fine-tune as recorded: its run, metrics per dataset and what it cost."""

    path: Path
    run: Run
    recorded: dict

    @property
    def label(self) -> str:
        return self.run.label

    def metrics(self, dataset: str) -> dict:
        return self.recorded["metrics"][dataset]

    @property
    def fit_seconds(self) -> float:
        return float(self.recorded["fit_seconds"])

    @property
    def post_hoc(self) -> bool:
        from polar_vbll.methods import get_spec

        return get_spec(self.run.method).post_hoc is not None

    def stable_rank(self) -> float | None:
        """Mean stable rank of Delta W over the adapted matrices at the last logged step."""
        logged = [h for h in self.recorded.get("history", []) if h.get("stable_rank")]
        return statistics.fmean(logged[-1]["stable_rank"].values()) if logged else None

    def probabilities(self, dataset: str) -> np.ndarray:
        return self.prediction(dataset)[0]

    def prediction(self, dataset: str) -> tuple[np.ndarray, np.ndarray]:
        """The stored test probabilities (N, C) and labels (N,) on ``dataset``."""
        return (self._stored[f"{dataset}/probs"].double().numpy(),
                self._stored[f"{dataset}/labels"].numpy())

    @cached_property
    def _stored(self) -> dict:
        """predictions.safetensors, read once per run (every dataset's records are in it)."""
        from safetensors.torch import load_file

        return load_file(str(self.path / "predictions.safetensors"))


def committed_runs(folder: Path | None = None) -> list[CommittedRun]:
    """Every committed run of the committed profile, seed 0, in the registry's method order."""
    from polar_vbll.methods import method_names

    order = {name: i for i, name in enumerate(method_names())}
    runs = []
    for path in run_store.committed(folder):
        recorded = run_store.read_run(path)
        config = recorded["config"]
        if config["profile"]["name"] != COMMITTED_TIER or config["seed"] != 0:
            continue
        run = Run.from_config(config)
        runs.append(CommittedRun(path, run, recorded))
    return sorted(runs, key=lambda r: (order.get(r.run.method, len(order)), r.label))


def runs_of(task: str, runs: list[CommittedRun] | None = None) -> list[CommittedRun]:
    return [r for r in (committed_runs() if runs is None else runs) if r.run.task == task]


def _base_rank(run: CommittedRun, runs: list[CommittedRun]) -> float | None:
    """A post-hoc method keeps its base fine-tune's adapters (mle unless an option says otherwise)."""
    base = run.run.options.get("laplace_base", "mle")
    for other in runs:
        if other.run.method == base and other.run.task == run.run.task and not other.run.options:
            return other.stable_rank()
    return None


def method_rows(task: str = ID_TASK, runs: list[CommittedRun] | None = None,
                noise_draws: int = 400) -> list[dict]:
    """One row per committed run on ``task``: in-distribution metrics, selective prediction
    (AURC, accuracy on the 80% most confident questions), cost and stable rank."""
    runs = runs_of(task, runs)
    rows = []
    for run in runs:
        m = run.metrics(task)
        probs, labels = run.prediction(task)
        floor = metrics.ece_noise_floor(probs, draws=noise_draws)
        rank = _base_rank(run, runs) if run.post_hoc else run.stable_rank()
        passes = run.recorded.get("passes", {}).get(task, {})
        rows.append({"method": run.label, "fit_s": run.fit_seconds, "post_hoc": run.post_hoc,
                     "accuracy": m["accuracy"], "ece": m["ece"], "ece_floor": floor["mean"],
                     "nll": m["nll"], "brier": m["brier"], "confidence": float(probs.max(1).mean()),
                     "aurc": uncertainty.aurc(probs, labels),
                     "accuracy_at_80": uncertainty.accuracy_at_coverage(probs, labels, 0.8),
                     "stable_rank": rank, "passes": passes.get("backbone_passes"),
                     "sequences": passes.get("sequences_per_question"), "n": m["n"]})
    return rows


def ood_rows(task: str = OOD_TRAIN_TASK, runs: list[CommittedRun] | None = None) -> list[dict]:
    """One row per committed run trained on ``task`` and tested on its OOD sets too, with the
    AUROC of telling each OOD set from ``task``'s test questions by 1 - max probability."""
    rows = []
    for run in runs_of(task, runs):
        if not run.run.ood:
            continue
        row = {"method": run.label, "in": run.metrics(task)}
        row["ood"] = {name: run.metrics(name) for name in run.run.ood}
        inside = run.probabilities(task)
        row["auroc"] = {name: uncertainty.ood_auroc(inside, run.probabilities(name))["max probability"]
                        for name in run.run.ood}
        for key in ("accuracy", "ece", "nll"):
            row[f"mean_ood_{key}"] = statistics.fmean(m[key] for m in row["ood"].values())
        row["mean_ood_auroc"] = statistics.fmean(row["auroc"].values())
        rows.append(row)
    return rows


def headline_rows(runs: list[CommittedRun] | None = None) -> list[dict]:
    """ARC-Easy and OBQA, in distribution, for :data:`HEADLINE_METHODS` with a committed run."""
    runs = committed_runs() if runs is None else runs
    rows = []
    for method in HEADLINE_METHODS:
        row = {"method": method}
        for task in (ID_TASK, OOD_TRAIN_TASK):
            match = [r for r in runs if r.run.method == method and r.run.task == task
                     and not r.run.options]
            row[task] = match[0].metrics(task) if match else None
        if row[ID_TASK] or row[OOD_TRAIN_TASK]:
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- markdown


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def headline_table(runs: list[CommittedRun] | None = None) -> str:
    header = ["method", "ARC-Easy ACC %", "ECE %", "NLL", "OBQA ACC %", "ECE %", "NLL"]
    body = []
    for row in headline_rows(runs):
        cells = [f"`{row['method']}`"]
        for task in (ID_TASK, OOD_TRAIN_TASK):
            m = row[task]
            cells += ["-", "-", "-"] if m is None else [_pct(m["accuracy"]), _pct(m["ece"]),
                                                         _num(m["nll"])]
        body.append(cells)
    return markdown(header, body)


def method_table(task: str = ID_TASK, runs: list[CommittedRun] | None = None) -> str:
    header = ["method", "fit s", "ACC %", "ECE %", "ECE floor %", "NLL", "Brier", "mean conf",
              "AURC", "ACC @ 80% cov %", "stable rank of ΔW", "passes / sequences per question"]
    body = []
    for row in method_rows(task, runs):
        fit = f"{row['fit_s']:.0f}" + (" + base" if row["post_hoc"] else "")
        cost = "-" if row["passes"] is None else f"{row['passes']} / {row['sequences']:.1f}"
        body.append([row["method"], fit, _pct(row["accuracy"]), _pct(row["ece"]),
                     _pct(row["ece_floor"]), _num(row["nll"]), _num(row["brier"]),
                     _num(row["confidence"], 2), _num(row["aurc"]), _pct(row["accuracy_at_80"]),
                     _num(row["stable_rank"], 2), cost])
    return markdown(header, body)


def ood_table(task: str = OOD_TRAIN_TASK, runs: list[CommittedRun] | None = None) -> str:
    rows = ood_rows(task, runs)
    if not rows:
        return ""
    sets = list(rows[0]["ood"])
    header = ["method", f"{SHORT_NAMES.get(task, task)} ACC / ECE %", "NLL",
              *(f"{SHORT_NAMES.get(s, s)} ACC / ECE %" for s in sets), "mean OOD NLL",
              "mean OOD AUROC"]
    body = []
    for row in rows:
        cells = [row["method"], f"{_pct(row['in']['accuracy'])} / {_pct(row['in']['ece'])}",
                 _num(row["in"]["nll"])]
        cells += [f"{_pct(row['ood'][s]['accuracy'])} / {_pct(row['ood'][s]['ece'])}" for s in sets]
        body.append(cells + [_num(row["mean_ood_nll"]), _num(row["mean_ood_auroc"])])
    return markdown(header, body)


# --------------------------------------------------------------------------- the README


def readme_block(text: str, path: str = "README.md", name: str = "headline") -> tuple[int, int]:
    """Where the generated table ``name`` sits in ``text`` (between its two markers)."""
    opening, closing = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    start, end = text.find(opening), text.find(closing)
    if start < 0 or end < start:
        raise ConfigError(f"{path}: expected the markers {opening} ... {closing} around the "
                          f"{name} table")
    return start + len(opening), end


def readme_tables(path: Path) -> dict:
    """The generated tables of ``path`` by marker name. The README: the headline from the committed
    runs and the notebooks' times from the walkthrough benchmark's JSON in its repository; the
    book's benchmarks page (``book/benchmarks.md``): every saved benchmark run."""
    from polar_vbll import measured

    if path.name == BENCHMARKS_PAGE.name:
        folder = path.resolve().parents[1] / "benchmarks" / "measured"
        return {"benchmarks": lambda: measured.benchmark_table(folder)}
    folder = path.resolve().parent / "benchmarks" / "measured"
    return {"headline": headline_table, "times": lambda: measured.time_table(folder)}


def write_readme(path: str | Path, check: bool = False) -> bool:
    """Put each of :func:`readme_tables` between its markers; True when the file changed (or,
    with ``check``, differs)."""
    path = Path(path)
    text = updated = path.read_text()
    for name, table in readme_tables(path).items():
        start, end = readme_block(updated, str(path), name)
        updated = updated[:start] + "\n" + table() + "\n" + updated[end:]
    if updated != text and not check:
        path.write_text(updated)
    return updated != text


def generated_files(readme: str | Path) -> list[Path]:
    """The files whose tables ``--readme`` writes: the README and, where the README's repository
    has it, the book's benchmarks page."""
    readme = Path(readme)
    page = readme.parent / BENCHMARKS_PAGE
    return [readme, page] if page.is_file() else [readme]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polar_vbll.results", description=__doc__.split("\n")[0])
    parser.add_argument("--readme", help="rewrite this README's generated tables (between their "
                                          "markers): the headline and the notebooks' times; and "
                                          f"the table of every saved benchmark run in {BENCHMARKS_PAGE} "
                                          "beside it")
    parser.add_argument("--check", action="store_true",
                        help="with --readme: change nothing, exit 1 if a table differs from the "
                             "runs and measurements")
    args = parser.parse_args(argv)
    if args.readme:
        for path in generated_files(args.readme):
            try:
                differs = write_readme(path, check=args.check)
            except (OSError, ConfigError) as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
            if args.check and differs:
                print(f"{path}: a generated table differs from the committed runs or the "
                      f"measured benchmarks; run "
                      f"`python -m polar_vbll.results --readme {args.readme}`", file=sys.stderr)
                return 1
            print(f"{path}: tables {'checked' if args.check else 'written'}")
        return 0
    print(headline_table(), method_table(), ood_table(), sep="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
