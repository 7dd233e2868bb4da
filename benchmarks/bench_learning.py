"""Do the fine-tunes learn? The four targets of the issue "Fine-tunes that learn", as JSON.

Reads the results.json of one ``polar-vbll compare`` run that holds ``zero_shot`` (the choice
form at step 0 = the zero-shot cloze classifier), ``mle`` and ``polar_vbll`` (what ``make demo``
writes), or runs that compare now. The letter-form zero-shot is scored here on the same test
questions (one backbone pass per question, no training).

1. Learning:     ACC(mle) >= ACC(cloze zero-shot) + 5 points, and >= ACC(letter) + 20 points.
2. Calibration:  ECE(polar_vbll) <= 0.5 x ECE(mle), NLL(polar_vbll) < NLL(mle), and
                 ACC(polar_vbll) >= ACC(mle) - 1 point.
3. Rank:         mean stable rank of Delta W, PoLAR (polar_vbll) / LoRA (mle) >= 2 (a goal).
4. Time:         one method's fit (the first one pays for the feature cache) <= 15 min; the
                 whole compare <= 30 min (``--demo-seconds``: the wall time of ``make demo``).

    .venv/bin/python benchmarks/bench_learning.py --from-results results/demo/results.json
    .venv/bin/python benchmarks/bench_learning.py --profile smoke      # trains now (fast)
    .venv/bin/python benchmarks/bench_learning.py --committed --test-questions all

Target 2 also reports how much the test set can resolve: each method's ECE noise floor (the ECE a
perfectly calibrated model with its confidences would show on as many questions,
``metrics.ece_noise_floor``) and a paired bootstrap 90% interval of the ECE ratio.
"""

from __future__ import annotations

import statistics

import _common

_common.add_repo_to_path()

LEARNING_OVER_CLOZE, LEARNING_OVER_LETTER = 5.0, 20.0
ECE_RATIO, ACCURACY_DROP = 0.5, 1.0
RANK_RATIO = 2.0
FIT_MINUTES, DEMO_MINUTES = 15.0, 30.0


def letter_zero_shot(run: dict, task: str) -> dict:
    """Letter-form zero-shot metrics on the run's own test questions (same profile slice)."""
    from polar_vbll import data, metrics, methods
    from polar_vbll.profiles import Profile

    profile = Profile(**run["profile"])
    questions = run.get("test_questions", profile.test_examples)  # --committed may ask for more
    examples = data.load_task(task, "test", limit=questions)
    method = methods.make_method("zero_shot", profile=profile, model_name=run["model"],
                                 progress=False, head_form="letter")
    record = method.predict(examples)
    return metrics.summarize(record["probs"], record["labels"])


def how_sure(run: dict, task: str) -> dict:
    """How much of target 2 the test set can resolve (when the run kept its probabilities): the
    ECE noise floor of both methods (the ECE a perfectly calibrated model with their confidences
    would show on these questions) and a paired bootstrap 90% interval of the ECE ratio."""
    from polar_vbll import metrics

    records = {name: run["methods"][name].get("records", {}).get(task, {})
               for name in ("mle", "polar_vbll")}
    if not all("probs" in r for r in records.values()):
        return {}
    mle, polar_vbll = records["mle"], records["polar_vbll"]
    interval = metrics.paired_bootstrap(metrics.ece_ratio, polar_vbll["probs"], mle["probs"], mle["labels"],
                                        draws=1000, level=0.9)
    return {"ece_noise_floor": {name: metrics.ece_noise_floor(r["probs"])
                                for name, r in records.items()},
            "ece_ratio_interval_90": [interval["low"], interval["high"]]}


def mean_stable_rank(entry: dict) -> float | None:
    logged = [h for h in entry.get("history", []) if "stable_rank" in h]
    return statistics.fmean(logged[-1]["stable_rank"].values()) if logged else None


def main() -> None:
    parser = _common.base_parser(__doc__.splitlines()[0], default_repeats=1)
    _common.add_results_options(parser, default_methods="zero_shot,mle,polar_vbll")
    parser.add_argument("--demo-seconds", type=float, default=None,
                        help="wall time of the whole `make demo` run, if measured outside")
    args = parser.parse_args()
    _common.apply_threads(args)
    runs, sources = _common.fine_tune_results(args)
    run, task = runs[-1], args.task
    for name in ("zero_shot", "mle", "polar_vbll"):
        if name not in run["methods"]:
            raise SystemExit(f"the results have no {name!r} (they have {sorted(run['methods'])});"
                             " run `polar-vbll compare --methods zero_shot,mle,polar_vbll`")
    summary = {name: run["methods"][name]["metrics"][task] for name in run["methods"]}
    summary["letter_zero_shot"] = letter_zero_shot(run, task)
    points = {name: 100 * s["accuracy"] for name, s in summary.items()}
    mle, polar_vbll = summary["mle"], summary["polar_vbll"]
    learning = {"mle_minus_cloze_points": points["mle"] - points["zero_shot"],
                "mle_minus_letter_points": points["mle"] - points["letter_zero_shot"]}
    learning["met"] = bool(learning["mle_minus_cloze_points"] >= LEARNING_OVER_CLOZE
                           and learning["mle_minus_letter_points"] >= LEARNING_OVER_LETTER)
    calibration = {"ece_ratio": polar_vbll["ece"] / mle["ece"],
                   "nll_difference": polar_vbll["nll"] - mle["nll"],
                   "accuracy_delta_points": points["polar_vbll"] - points["mle"]}
    calibration.update(how_sure(run, task))
    calibration["met"] = bool(calibration["ece_ratio"] <= ECE_RATIO
                              and calibration["nll_difference"] < 0
                              and calibration["accuracy_delta_points"] >= -ACCURACY_DROP)
    ranks = {name: mean_stable_rank(run["methods"][name]) for name in ("mle", "polar_vbll")}
    rank = {"lora_mean_stable_rank": ranks["mle"], "polar_mean_stable_rank": ranks["polar_vbll"],
            "ratio": (ranks["polar_vbll"] / ranks["mle"]) if ranks["mle"] else None}
    rank["met"] = bool(rank["ratio"] and rank["ratio"] >= RANK_RATIO)
    fits = {name: entry.get("fit_seconds") for name, entry in run["methods"].items()}
    timing = {"fit_seconds": fits, "first_fit_includes_feature_cache": next(iter(fits)),
              "demo_seconds": args.demo_seconds}
    longest = max(v for v in fits.values() if v is not None)
    timing["met"] = bool(longest <= 60 * FIT_MINUTES and
                         (args.demo_seconds is None or args.demo_seconds <= 60 * DEMO_MINUTES))
    lines = [f"{task} test, {run['profile']['name']} profile, n = {summary['mle'].get('n')}",
             f"{'':<18} {'ACC %':>7} {'ECE %':>7} {'NLL':>7} {'Brier':>7}"]
    for name, s in summary.items():
        lines.append(f"{name:<18} {100 * s['accuracy']:>7.1f} {100 * s['ece']:>7.2f} "
                     f"{s['nll']:>7.3f} {s['brier']:>7.3f}")
    lines += [f"1 learning: mle - cloze {learning['mle_minus_cloze_points']:+.1f} points, "
              f"mle - letter {learning['mle_minus_letter_points']:+.1f} points",
              f"2 calibration: ECE ratio {calibration['ece_ratio']:.2f}, NLL difference "
              f"{calibration['nll_difference']:+.3f}, ACC {calibration['accuracy_delta_points']:+.1f} points",
              *([f"  ECE noise floor (a calibrated model, these questions): mle "
                 f"{100 * calibration['ece_noise_floor']['mle']['mean']:.1f}%, polar_vbll "
                 f"{100 * calibration['ece_noise_floor']['polar_vbll']['mean']:.1f}%; ECE ratio "
                 f"90% interval {calibration['ece_ratio_interval_90'][0]:.2f}.."
                 f"{calibration['ece_ratio_interval_90'][1]:.2f}"]
                if "ece_noise_floor" in calibration else []),
              f"3 rank: PoLAR {rank['polar_mean_stable_rank']} / LoRA {rank['lora_mean_stable_rank']}",
              f"4 time: fits {', '.join(f'{k} {v:.0f} s' for k, v in fits.items() if v)}"]
    met = learning["met"] and calibration["met"] and rank["met"] and timing["met"]
    payload = _common.result(
        "learning", "cpu", {"metrics": summary, "source": sources[-1]},
        {"learning": learning, "calibration": calibration, "rank": rank, "time": timing},
        target="1 mle >= cloze + 5 and >= letter + 20 points; 2 ECE polar_vbll <= 0.5 x mle, "
               "NLL lower, ACC >= mle - 1; 3 stable rank PoLAR/LoRA >= 2; 4 fit <= 15 min, "
               "demo <= 30 min", met=met, profile=run["profile"]["name"], task=task)
    _common.emit(payload, lines)


if __name__ == "__main__":
    main()
