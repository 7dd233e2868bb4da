"""Calibration on the test split: ECE and NLL of polar_vbll vs mle, accuracy alongside.

Both methods are fitted by ``evaluation.compare`` on the same task, profile, data and seed, and
scored by ``polar_vbll.metrics`` (ECE with 15 bins, top label); or the figures are read from the
results.json of such a run (``--from-results``), which avoids re-training. When the results
hold the per-question probabilities, a paired bootstrap over test questions (same resample for
both methods) gives the spread of the ECE ratio, and each method's *ECE noise floor* (the ECE a
perfectly calibrated model with its confidences would show on as many questions,
``metrics.ece_noise_floor``) says how small an ECE the test set can resolve. ``--committed``
scores the committed course-tier checkpoints, optionally on more test questions than they recorded
(``--test-questions all``: the whole split; nothing is trained).

    .venv/bin/python benchmarks/bench_calibration.py --from-results results/demo/results.json
    .venv/bin/python benchmarks/bench_calibration.py --profile smoke      # trains now (fast)
    .venv/bin/python benchmarks/bench_calibration.py --committed --test-questions all
    .venv/bin/python benchmarks/bench_calibration.py --committed --test-questions all \
        --methods mle,polar_vbll,temperature,laplace,blob,tfb --bootstrap 0   # more rows

Methods after the first two in ``--methods`` get rows of their own (same questions, same
metrics); the ratios and the target compare the first two.

Target (issue): ECE(polar_vbll) <= 0.33 x ECE(mle) at an accuracy at most 1 point lower.
"""

from __future__ import annotations

import statistics

import _common

_common.add_repo_to_path()

import numpy as np  # noqa: E402

ECE_RATIO_TARGET = 0.33
ACCURACY_DROP_POINTS = 1.0


def bootstrap_ece_ratio(base_record, cand_record, resamples: int, seed: int):
    """Paired bootstrap (same questions for both) of ECE(candidate) / ECE(baseline), 95%."""
    from polar_vbll.metrics import ece_ratio, paired_bootstrap

    labels = np.asarray(base_record["labels"])
    if not np.array_equal(labels, np.asarray(cand_record["labels"])):
        return None
    result = paired_bootstrap(ece_ratio, np.asarray(cand_record["probs"]),
                              np.asarray(base_record["probs"]), labels, draws=resamples,
                              level=0.95, seed=seed)
    return {"resamples": resamples, "p2_5": result["low"], "value": result["value"],
            "p97_5": result["high"]}


def main() -> None:
    parser = _common.base_parser(__doc__.splitlines()[0], default_repeats=1)
    _common.add_results_options(parser, default_methods="mle,polar_vbll")
    parser.add_argument("--bootstrap", type=int, default=1000, help="0 to skip")
    args = parser.parse_args()
    _common.apply_threads(args)
    runs, sources = _common.fine_tune_results(args)
    from polar_vbll import metrics

    header = (f"{'run':<4} {'method':<12} {'N':>5} {'ACC %':>7} {'ECE %':>7} {'floor %':>7} "
              f"{'NLL':>7} {'Brier':>7}")
    lines = [f"calibration on the {args.task} test split", header, "-" * len(header)]
    measurements, ece_ratios, nll_ratios, accuracy_deltas = [], [], [], []
    for index, run in enumerate(runs):
        baseline, candidate = _common.pick_methods(args, run)
        others = [m.strip() for m in args.methods.split(",")[2:] if m.strip() in run["methods"]]
        row = {"source": sources[index], "profile": run["profile"]["name"], "seed": run.get("seed")}
        for name in (baseline, candidate, *others):  # the target compares the first two
            summary = run["methods"][name]["metrics"][args.task]
            row[name] = {k: summary[k] for k in ("accuracy", "ece", "nll", "brier") if k in summary}
            records = run["methods"][name].get("records", {}).get(args.task, {})
            row[name]["questions"] = len(records.get("labels", [])) or None
            if "probs" in records:  # the ECE a perfectly calibrated model would show here
                row[name]["ece_noise_floor"] = metrics.ece_noise_floor(records["probs"])
            s = row[name]
            floor = s.get("ece_noise_floor", {}).get("mean", float("nan"))
            lines.append(f"{index:<4} {name:<12} {s['questions'] or '?':>5} {100 * s['accuracy']:>7.1f} "
                         f"{100 * s['ece']:>7.2f} {100 * floor:>7.2f} {s['nll']:>7.3f} "
                         f"{s.get('brier', float('nan')):>7.3f}")
        row["ece_ratio"] = row[candidate]["ece"] / row[baseline]["ece"]
        row["nll_ratio"] = row[candidate]["nll"] / row[baseline]["nll"]
        row["accuracy_delta_points"] = 100 * (row[candidate]["accuracy"] - row[baseline]["accuracy"])
        base_rec = run["methods"][baseline].get("records", {}).get(args.task)
        cand_rec = run["methods"][candidate].get("records", {}).get(args.task)
        if args.bootstrap and base_rec and cand_rec and "probs" in base_rec and "probs" in cand_rec:
            row["ece_ratio_bootstrap"] = bootstrap_ece_ratio(base_rec, cand_rec, args.bootstrap, index)
        ece_ratios.append(row["ece_ratio"])
        nll_ratios.append(row["nll_ratio"])
        accuracy_deltas.append(row["accuracy_delta_points"])
        measurements.append(row)
    ratios = {
        f"ece_{candidate}_over_{baseline}": {"median_over_runs": statistics.median(ece_ratios),
                                             "min": min(ece_ratios), "max": max(ece_ratios)},
        f"nll_{candidate}_over_{baseline}": {"median_over_runs": statistics.median(nll_ratios),
                                             "min": min(nll_ratios), "max": max(nll_ratios)},
        "accuracy_delta_points": {"median_over_runs": statistics.median(accuracy_deltas),
                                  "min": min(accuracy_deltas), "max": max(accuracy_deltas)},
    }
    ece, delta = statistics.median(ece_ratios), statistics.median(accuracy_deltas)
    met = bool(ece <= ECE_RATIO_TARGET and delta >= -ACCURACY_DROP_POINTS)
    lines.append(f"ECE ratio {ece:.2f}, NLL ratio {statistics.median(nll_ratios):.2f}, "
                 f"accuracy {delta:+.1f} points ({len(runs)} run(s))")
    boot = measurements[-1].get("ece_ratio_bootstrap")
    if boot:
        lines.append(f"ECE ratio bootstrap 95% interval (last run): {boot['p2_5']:.2f}..{boot['p97_5']:.2f}")
    profiles = sorted({row["profile"] for row in measurements})
    notes = ("smoke profile: a few steps on 16 questions, the figures are not meaningful"
             if profiles == ["smoke"] else "")
    payload = _common.result(
        "calibration", "cpu", measurements, ratios,
        target=f"ECE {candidate} <= {ECE_RATIO_TARGET} x ECE {baseline} with accuracy at most "
               f"{ACCURACY_DROP_POINTS:g} point lower", met=met, notes=notes,
        profile=",".join(profiles), task=args.task, sources=sources)
    _common.emit(payload, lines)


if __name__ == "__main__":
    main()
