"""Stable rank of Delta W after the same fine-tune: PoLAR (polar_vbll) vs LoRA (mle).

Stable rank = ||Delta W||_F^2 / ||Delta W||_2^2 of every adapted layer (q_proj, v_proj of all
30 blocks), as the Trainer logs it (``adapters.rank_report``) at its last log step. Both
methods are fitted by ``evaluation.compare`` on the same task, profile, data and seed; or the
figures are read from the results.json of such a run (``--from-results``), which avoids
re-training (a cpu-profile fine-tune takes 10+ minutes per method on 2 cores).

    .venv/bin/python benchmarks/bench_stable_rank.py --from-results results/demo/results.json
    .venv/bin/python benchmarks/bench_stable_rank.py --profile smoke      # trains now (fast)

Target (issue): mean stable rank of PoLAR's Delta W >= 2 x LoRA's.
"""

from __future__ import annotations

import statistics

import _common

_common.add_repo_to_path()

TARGET = 2.0


def final_stable_ranks(entry: dict) -> tuple[int, dict]:
    """(step, {layer: stable rank}) of the last history entry that logged stable ranks."""
    logged = [h for h in entry.get("history", []) if "stable_rank" in h]
    if not logged:
        raise SystemExit("the results hold no stable ranks in the training history")
    return logged[-1]["step"], logged[-1]["stable_rank"]


def main() -> None:
    parser = _common.base_parser(__doc__.splitlines()[0], default_repeats=1)
    _common.add_results_options(parser, default_methods="mle,polar_vbll")
    args = parser.parse_args()
    _common.apply_threads(args)
    runs, sources = _common.fine_tune_results(args)
    measurements, per_run_ratio, lines = [], [], []
    header = f"{'run':<4} {'method':<12} {'step':>5} {'mean':>7} {'median':>7} {'IQR':>7} " \
             f"{'min':>6} {'max':>6}"
    lines += [f"stable rank of Delta W at the last logged step ({args.task})", header,
              "-" * len(header)]
    for index, run in enumerate(runs):
        baseline, candidate = _common.pick_methods(args, run)
        row = {"source": sources[index], "profile": run["profile"]["name"], "seed": run.get("seed")}
        for name in (baseline, candidate):
            step, ranks = final_stable_ranks(run["methods"][name])
            values = list(ranks.values())
            row[name] = {"step": step, "layers": len(values), "mean": statistics.fmean(values),
                         **{k: v for k, v in _common.summary(values).items() if k != "values"},
                         "per_layer": ranks}
            s = row[name]
            lines.append(f"{index:<4} {name:<12} {step:>5} {s['mean']:>7.3f} {s['median']:>7.3f} "
                         f"{s['iqr']:>7.3f} {s['min']:>6.2f} {s['max']:>6.2f}")
        row["ratio_of_means"] = row[candidate]["mean"] / row[baseline]["mean"]
        row["ratio_of_medians"] = row[candidate]["median"] / row[baseline]["median"]
        per_run_ratio.append(row["ratio_of_means"])
        measurements.append(row)
    ratios = {f"{candidate}_over_{baseline}_mean_stable_rank": {
        "median_over_runs": statistics.median(per_run_ratio), "min": min(per_run_ratio),
        "max": max(per_run_ratio), "runs": len(per_run_ratio)}}
    value = statistics.median(per_run_ratio)
    lines.append(f"{candidate} / {baseline} mean stable rank: {value:.2f}x "
                 f"(over {len(runs)} run(s): {min(per_run_ratio):.2f}..{max(per_run_ratio):.2f})")
    profiles = sorted({row["profile"] for row in measurements})
    notes = ("smoke profile: a few steps only, the figure is not meaningful"
             if profiles == ["smoke"] else "")
    payload = _common.result(
        "stable_rank", "cpu", measurements, ratios,
        target=f"mean stable rank {candidate} >= {TARGET:g} x {baseline}",
        met=bool(value >= TARGET), notes=notes, profile=",".join(profiles), task=args.task,
        sources=sources)
    _common.emit(payload, lines)


if __name__ == "__main__":
    main()
