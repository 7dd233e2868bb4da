"""Evaluation: fit methods, predict in and out of distribution, metrics, JSON and an HTML report.

The out-of-distribution (OOD) protocol of the Bayesian-LoRA literature: train on OpenBookQA,
evaluate on ARC-Challenge, ARC-Easy and MMLU subjects (:data:`polar_vbll.splits.OOD_PROTOCOL`,
importable from here too, like :func:`~polar_vbll.splits.load_splits`).

``compare`` returns a plain dict (JSON-able once :func:`to_json` drops the tensors)::

    {"task": ..., "profile": {...}, "model": ..., "seed": ...,
     "methods": {name: {"metrics": {dataset: summary}, "records": {dataset: record},
                        "seconds_per_example": {dataset: s}, "fit_seconds": s,
                        "history": [...]}}}
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from polar_vbll import distributed, models
from polar_vbll import pretrained as pretrained_lib
from polar_vbll.checkpoints import atomic_write_text, ensure_writable_folder
from polar_vbll.errors import ConfigError
from polar_vbll.methods import get_spec
from polar_vbll.profiles import Profile, get_profile
from polar_vbll.splits import OOD_PROTOCOL, PROTOCOL_TRAIN_TASK, load_splits, resolve_ood


def compare(task: str, methods, profile: Profile | str | None = None, ood=None,
            model_name: str = models.SMOLLM2, seed: int = 0, progress: bool = True,
            out: str | Path | None = None, method_options: dict | None = None,
            pretrained: bool = False, checkpoint_folder: str | Path | None = None,
            save_checkpoints: str | Path | None = None, say=print) -> dict:
    """Fit every method on ``task`` and evaluate it on the test split and the OOD tasks.

    ``pretrained``: load a method's committed checkpoint when one matches its run
    (:func:`polar_vbll.pretrained.fit_or_load`; the notebooks do this), else train it.
    ``checkpoint_folder``: where to look (default ``polar_vbll/trained``).
    ``save_checkpoints``: write every trained run there as a checkpoint (``polar-vbll
    checkpoints``).

    Under ``accelerate launch`` / ``torchrun`` every process trains and evaluates (data parallel,
    :mod:`polar_vbll.distributed`); only the main process speaks and writes files.
    """
    main = distributed.world().is_main
    if not main:
        say, progress, out, save_checkpoints = (lambda *args, **kwargs: None), False, None, None

    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    if not names:
        raise ConfigError("no methods given; e.g. --methods mle,polar_vbll")
    for name in names:
        get_spec(name)
    ood_tasks = resolve_ood(task, ood)
    if out is not None:
        ensure_writable_folder(Path(out))
    splits = None  # loaded when the first method is trained here
    head_form = (method_options or {}).get("head_form") or profile.head_form
    results = {"task": task, "ood": ood_tasks, "profile": profile.to_dict(),
               "head_form": head_form, "model": model_name, "seed": seed, "methods": {}}
    fitted = {}  # name -> fitted_state(): temperature and laplace start from the fitted mle
    for name in names:
        run = pretrained_lib.Run(name, task, profile, seed, model_name,
                                 dict(method_options or {}), tuple(ood_tasks))
        shown, path = (pretrained_lib.choose(run, say, checkpoint_folder) if pretrained
                       else (run, None))
        base = _post_hoc_base(name, method_options)
        if path is not None:
            result = pretrained_lib.load_and_say(shown, path, say)
        else:
            splits = splits or load_splits(task, profile, ood_tasks)
            if base and base not in fitted and pretrained:  # start from the committed base run
                base_path = pretrained_lib.find(run.replace(method=base), checkpoint_folder)[0]
                if base_path is not None:
                    fitted[base] = pretrained_lib.load(base_path).method.fitted_state()
            result = pretrained_lib.train(run, splits, fitted.get(base), progress, say)
            if name in ("mle", "polar"):
                fitted[name] = result.method.fitted_state()
            if save_checkpoints is not None:
                saved = pretrained_lib.save(result, result.method, save_checkpoints,
                                            command="polar-vbll checkpoints")
                say(f"{run.label}: saved {saved}")
        entry = result.entry()
        entry["profile"] = result.profile.name
        # committed post-hoc runs were made by a compare that handed them its mle (or polar)
        entry["reused_fit_of"] = base if path is not None or base in fitted else None
        results["methods"][name] = entry
        del result  # frees the method (the next one loads its own copy of the model)
        if out is not None:  # after every method: a long comparison cut short loses nothing
            write_results(results, out)
    return results


def _post_hoc_base(name: str, method_options: dict | None) -> str | None:
    """The method whose fit a post-hoc method adds its step to (None for the others)."""
    if not get_spec(name).post_hoc:
        return None
    return "polar" if (method_options or {}).get("laplace_base") == "polar" else "mle"


def to_json(results: dict, keep_probabilities: bool = True) -> dict:
    """Drop tensors that JSON cannot hold; keep probs/labels lists (for the widgets) if asked."""
    def convert(value):
        if isinstance(value, torch.Tensor):
            return value.tolist()
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()
                    if k not in ("sample_logits", "logits", "mask")}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    clean = convert(results)
    if not keep_probabilities:
        for entry in clean["methods"].values():
            entry.pop("records", None)
    return clean


def records_for_widgets(results: dict) -> dict:
    """{method: {dataset: record}} -- what ``widgets.calibration_explorer`` takes."""
    return {name: entry["records"] for name, entry in results["methods"].items()}


def metrics_table(results: dict) -> str:
    """A plain-text table: one row per method and dataset."""
    header = f"{'method':<12} {'dataset':<26} {'ACC':>6} {'ECE':>6} {'NLL':>6} {'Brier':>6} " \
             f"{'ms/ex':>7}"
    lines = [header, "-" * len(header)]
    for name, entry in results["methods"].items():
        for dataset, summary in entry["metrics"].items():
            lines.append(
                f"{name:<12} {dataset:<26} {100 * summary['accuracy']:>6.1f} "
                f"{100 * summary['ece']:>6.1f} {summary['nll']:>6.3f} {summary['brier']:>6.3f} "
                f"{1000 * entry['seconds_per_example'][dataset]:>7.1f}")
    lines.append("ACC and ECE in %, NLL in nats, ms/ex = prediction time per question")
    return "\n".join(lines)


def uncertainty_summary(results: dict) -> dict:
    """Per method and dataset: AURC, excess AURC, accuracy at 50% / 80% coverage and, for each
    OOD dataset, the AUROC against the task's test split by 1 - max p and by the entropy
    (:mod:`polar_vbll.uncertainty`)."""
    from polar_vbll import uncertainty

    summary = {}
    for name, entry in results["methods"].items():
        records, task = entry["records"], results["task"]
        summary[name] = {dataset: uncertainty.selective_summary(record["probs"], record["labels"])
                         for dataset, record in records.items()}
        for dataset in results["ood"]:
            auroc = uncertainty.ood_auroc(records[task]["probs"], records[dataset]["probs"])
            summary[name][dataset].update({f"auroc ({score})": value for score, value in auroc.items()})
    return summary


def uncertainty_table(results: dict) -> str:
    """:func:`uncertainty_summary` as plain text, one row per method and dataset."""
    header = f"{'method':<12} {'dataset':<26} {'AURC':>7} {'excess':>7} {'acc@50':>7} {'acc@80':>7} " \
             f"{'AUROC 1-max p':>14} {'AUROC entropy':>14}"
    lines = [header, "-" * len(header)]
    for name, by_dataset in uncertainty_summary(results).items():
        for dataset, row in by_dataset.items():
            auroc = [f"{row[key]:>14.3f}" if key in row else f"{'':>14}"
                     for key in ("auroc (max probability)", "auroc (entropy)")]
            lines.append(f"{name:<12} {dataset:<26} {row['aurc']:>7.4f} {row['excess_aurc']:>7.4f} "
                         f"{100 * row['accuracy@50']:>7.1f} {100 * row['accuracy@80']:>7.1f} " + " ".join(auroc))
    lines.append("AURC: area under the risk-coverage curve (lower is better); acc@k: accuracy on the k% "
                 "most confident questions; AUROC: the OOD set against the task's test split")
    return "\n".join(lines)


def write_results(results: dict, out: str | Path) -> dict[str, Path]:
    """results.json (atomic) and report.html (reliability diagrams with bin counts, metric bars,
    the selective-prediction and OOD-detection table, risk-coverage curves) in ``out``."""
    from polar_vbll import uncertainty_viz, viz

    out = Path(out)
    ensure_writable_folder(out)
    paths = {"json": out / "results.json", "report": out / "report.html"}
    atomic_write_text(paths["json"], json.dumps({**to_json(results), "uncertainty": uncertainty_summary(results)},
                                                indent=1))
    table = {name: entry["metrics"][results["task"]]
             for name, entry in results["methods"].items()}
    figures = [viz.reliability_diagram(
        {name: entry["records"][results["task"]] for name, entry in results["methods"].items()},
        slider_bins=[5, 10, 15, 20]), viz.metric_comparison(table),
        uncertainty_viz.risk_coverage_figure(
            {name: entry["records"][results["task"]] for name, entry in results["methods"].items()},
            title=f"Risk-coverage on {results['task']}: answer the most confident questions first")]
    for dataset in results["ood"]:
        figures.append(viz.reliability_diagram(
            {name: entry["records"][dataset] for name, entry in results["methods"].items()}))
    parts = [f"<h1>polar_vbll: {results['task']} ({results['profile']['name']} profile)</h1>",
             f"<pre>{metrics_table(results)}</pre>", f"<pre>{uncertainty_table(results)}</pre>"]
    for index, figure in enumerate(figures):
        parts.append(figure.to_html(full_html=False,
                                    include_plotlyjs="inline" if index == 0 else False))
    html = "<html><head><meta charset='utf-8'><title>polar_vbll report</title></head><body>" \
           + "\n".join(parts) + "</body></html>"
    atomic_write_text(paths["report"], html)
    return paths


__all__ = ["OOD_PROTOCOL", "PROTOCOL_TRAIN_TASK", "compare", "load_splits", "metrics_table",
           "records_for_widgets", "resolve_ood", "to_json", "uncertainty_summary", "uncertainty_table",
           "write_results"]
