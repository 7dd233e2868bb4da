"""Shared pieces of the benchmark scripts: interleaved timing, robust statistics, JSON output.

Every benchmark measures the sides it compares *alternately in the same run* (round-robin,
with the order rotated every round), so a burst of load from another process hits all sides
alike. It reports, per side, the median and interquartile range of the per-repeat times; the
claim is the *ratio of medians*, with the min / max of the per-round (paired) ratios as its
spread. Never a single absolute time as the claim.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Callable

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def base_parser(description: str, default_repeats: int, model: bool = True) -> argparse.ArgumentParser:
    """argparse with the options every benchmark shares: --repeats, and where the benchmark runs
    the model (``model``), --profile, --device and --threads."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="JSON result on stdout, a short table on stderr.")
    parser.add_argument("--repeats", type=int, default=default_repeats,
                        help="timed rounds; every round measures every side once")
    if not model:
        return parser
    parser.add_argument("--profile", default=None,
                        help="smoke | course | full; default: $POLAR_VBLL_PROFILE, else course "
                             "(polar_vbll.profiles.get_profile)")
    parser.add_argument("--device", default=None, help="cpu | cuda; default: cuda if available")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice)")
    return parser


def apply_threads(args) -> None:
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def resolve_profile(name):
    from polar_vbll.profiles import get_profile

    return get_profile(name)


def resolve_device(name) -> torch.device:
    from polar_vbll.models import default_device

    if not name:
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"--device {name!r}: expected cpu or cuda (or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name!r}: CUDA is not available on this machine "
                         f"(torch {torch.__version__}); use --device cpu")
    return device


def machine(device: torch.device | str | None = None) -> dict:
    device = torch.device(device) if device is not None else torch.device("cpu")
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(sides: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                device="cpu", inner: int | dict[str, int] = 1) -> dict[str, list[float]]:
    """Seconds per call of each side, measured round-robin.

    ``warmup`` untimed rounds first; then ``repeats`` rounds, each timing every side once
    (``inner`` calls per timing -- one number, or one per side -- divided out), the order
    rotated by one every round.
    """
    names = list(sides)
    counts = inner if isinstance(inner, dict) else {name: inner for name in names}
    for _ in range(warmup):
        for name in names:
            sides[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(counts[name]):
                sides[name]()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / counts[name])
    return times


def operator_counter(host_tensors=()):
    """A dispatch mode that counts what runs under it: ``count``, the tensor operators (eager
    PyTorch launches about one GPU kernel for each, from the host, one after the other), and
    ``host_reads``, the reads of a tensor's value by the host (``.item()``, ``if tensor:``; on
    a GPU each one waits until the device has finished). Reads of ``host_tensors`` are not
    counted: tensors that stay on the CPU on every device, like Adam's step counters."""
    from torch.utils._python_dispatch import TorchDispatchMode

    skipped = {id(tensor) for tensor in host_tensors}

    class Counter(TorchDispatchMode):
        count = 0
        host_reads = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += 1
            if func.overloadpacket is torch.ops.aten._local_scalar_dense and id(args[0]) not in skipped:
                self.host_reads += 1
            return func(*args, **(kwargs or {}))

    return Counter()


def quartiles(values: list[float]) -> tuple[float, float, float]:
    values = sorted(values)
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def summary(values: list[float]) -> dict:
    """median, interquartile range, min, max and n of a list of per-repeat values."""
    q1, median, q3 = quartiles(values)
    return {"median": median, "q1": q1, "q3": q3, "iqr": q3 - q1, "min": min(values),
            "max": max(values), "n": len(values), "values": values}


def ratio(numerator: list[float], denominator: list[float]) -> dict:
    """Ratio of medians, plus the median / min / max of the per-round (paired) ratios."""
    paired = [a / b for a, b in zip(numerator, denominator)]
    return {"ratio_of_medians": statistics.median(numerator) / statistics.median(denominator),
            "paired_median": statistics.median(paired), "paired_min": min(paired),
            "paired_max": max(paired)}


def result(name: str, device, measurements: dict, ratios: dict, target: str, met,
           notes: str = "", **extra) -> dict:
    """The JSON object a benchmark prints. ``extra`` adds keys, among them ``headline``: the
    absolute figures ({figure: "value unit"}) that a target in seconds or bytes is about, which
    the book's table shows before the ratios (:func:`polar_vbll.measured.benchmark_rows`)."""
    return {"name": name, "machine": machine(device),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:]),
            "measurements": measurements, "ratios": ratios, "target": target, "met": met,
            "notes": notes, **extra}


def emit(payload: dict, table_lines: list[str]) -> None:
    """The JSON object on stdout, the human table on stderr."""
    print("\n".join(table_lines), file=sys.stderr)
    verdict = {True: "MET", False: "MISSED", None: "no target"}[payload["met"]]
    print(f"target: {payload['target']} -> {verdict}", file=sys.stderr)
    if payload.get("notes"):
        print(f"note: {payload['notes']}", file=sys.stderr)
    json.dump(payload, sys.stdout, indent=1)
    sys.stdout.write("\n")
    sys.stdout.flush()


def time_table(times: dict[str, list[float]], reference: str, unit: str = "ms",
               scale: float = 1e3) -> list[str]:
    """One row per side: median, IQR, min, max, ratio of medians to ``reference``."""
    ref = statistics.median(times[reference])
    header = f"{'side':<24} {'median':>10} {'IQR':>9} {'min':>9} {'max':>9} {'x ' + reference:>14}"
    lines = [header, "-" * len(header)]
    for name, values in times.items():
        s = summary(values)
        lines.append(f"{name:<24} {scale * s['median']:>8.2f}{unit:>2} {scale * s['iqr']:>9.2f} "
                     f"{scale * s['min']:>9.2f} {scale * s['max']:>9.2f} "
                     f"{s['median'] / ref:>14.3f}")
    lines.append(f"times in {unit}; {len(times[reference])} interleaved rounds")
    return lines


def add_repo_to_path() -> None:
    """Let ``python benchmarks/bench_x.py`` import polar_vbll from the checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)


def question_count(text: str):
    """argparse type of --test-questions: "all" or a whole number >= 1."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of questions >= 1 or 'all', got {text!r}")
    return value


def add_results_options(parser, default_methods: str) -> None:
    """Options of the benchmarks that read a fine-tune: reuse a results.json or train now."""
    parser.add_argument("--from-results", action="append", default=[], metavar="PATH",
                        help="a results.json (or the folder holding it) written by "
                             "`polar-vbll compare --out DIR` / evaluation.write_results; repeat "
                             "the option for several runs (seeds). Without it, the benchmark "
                             "fine-tunes now with evaluation.compare (--repeats seeds)")
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--methods", default=default_methods,
                        help="baseline,candidate[,more]: the target compares the first two; bench_calibration scores the rest beside them")
    parser.add_argument("--out", default=None,
                        help="when training now: also write results.json + report.html here "
                             "(seed i goes to OUT/seed<i>)")
    parser.add_argument("--committed", action="store_true",
                        help="read the committed course-tier checkpoints (polar_vbll/trained) instead "
                             "of a results.json or a new fine-tune; nothing is trained")
    parser.add_argument("--test-questions", default=None, metavar="N|all", type=question_count,
                        help="with --committed: score this many test questions (default: the "
                             "ones the checkpoints recorded, the profile's test_examples); the "
                             "recorded ones are reused and the others predicted now")


def fine_tune_results(args) -> tuple[list[dict], list[str]]:
    """[results dict per run] and where each came from: read --from-results, else train."""
    import json
    from pathlib import Path

    runs, sources = [], []
    for path in args.from_results:
        path = Path(path)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            raise SystemExit(f"--from-results {path}: no such file")
        runs.append(json.loads(path.read_text()))
        sources.append(str(path))
    if args.test_questions is not None and not args.committed:
        raise SystemExit("--test-questions applies to --committed only (a results.json or a new "
                         "fine-tune has the profile's test questions)")
    if runs:
        return runs, sources
    if args.committed:
        run = committed_results(args.task, [m.strip() for m in args.methods.split(",")],
                                args.test_questions)
        return [run], [run["source"]]
    from polar_vbll import evaluation

    for seed in range(args.repeats):
        out = None if args.out is None else Path(args.out) / f"seed{seed}"
        results = evaluation.compare(args.task, args.methods, profile=args.profile, seed=seed,
                                     progress=False, out=out)
        runs.append(evaluation.to_json(results))
        sources.append(f"evaluation.compare({args.task!r}, {args.methods!r}, "
                       f"profile={results['profile']['name']!r}, seed={seed})"
                       + (f" -> {out}" if out else ""))
    return runs, sources


def pick_methods(args, run: dict) -> tuple[str, str]:
    baseline, candidate = [m.strip() for m in args.methods.split(",")][:2]
    for name in (baseline, candidate):
        if name not in run["methods"]:
            raise SystemExit(f"method {name!r} is not in the results (it has "
                             f"{sorted(run['methods'])}); choose --methods")
    return baseline, candidate


def committed_results(task: str, methods: list[str], test_questions=None) -> dict:
    """A results dict (as results.json holds it) from the committed course-profile checkpoints.

    ``test_questions``: None for the questions each checkpoint recorded (the profile's
    ``test_examples``), an int or "all" for more: the recorded ones are reused (and must be the
    split's first ones) and the rest of the split is predicted now with the loaded method.
    """
    import torch

    from polar_vbll import data, metrics, run_store
    from polar_vbll.profiles import get_profile
    from polar_vbll.runs import COMMITTED_TIER, Run

    profile = get_profile(COMMITTED_TIER)
    wanted = None if test_questions in (None, "all") else test_questions
    examples = data.load_task(task, "test", limit=wanted)
    if test_questions is None:
        examples = examples[:profile.test_examples]
    result = {"task": task, "profile": profile.to_dict(), "seed": 0, "model": None,
              "methods": {}, "test_questions": len(examples),
              "source": f"committed checkpoints ({COMMITTED_TIER} tier), "
                        f"{len(examples)} {task} test questions"}
    for name in methods:
        path, reasons = run_store.find(Run(name, task, profile))
        if path is None:
            raise SystemExit(f"no committed {name!r} checkpoint for {task}: {'; '.join(reasons)}"
                             " (run `polar-vbll checkpoints`)")
        fitted = run_store.load(path)
        result["model"] = fitted.run.model
        record = {k: fitted.records[task][k] for k in ("probs", "labels")}
        recorded = len(record["labels"])
        shared = min(recorded, len(examples))
        if record["labels"][:shared].tolist() != [e.label for e in examples[:shared]]:
            raise SystemExit(f"{path.name}: its recorded labels are not those of the first "
                             f"{recorded} {task} test questions; re-run `polar-vbll checkpoints`")
        if len(examples) > recorded:  # every record has data.NUM_CLASSES columns
            more = fitted.method.predict(examples[recorded:])
            record = {key: torch.cat([record[key], more[key].to(record[key].dtype)])
                      for key in ("probs", "labels")}
        elif len(examples) < recorded:
            record = {k: v[:len(examples)] for k, v in record.items()}
        result["methods"][name] = {
            "metrics": {task: metrics.summarize(record["probs"], record["labels"])},
            "records": {task: {k: v.tolist() for k, v in record.items()}},
            "history": fitted.history, "fit_seconds": fitted.fit_seconds,
            "loaded_from": path.name}
    return result
