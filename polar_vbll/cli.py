"""polar-vbll: evaluate, fine-tune and compare from the command line.

    polar-vbll eval --task arc_easy --split test --limit 200
    polar-vbll finetune --task arc_easy --method polar_vbll --profile course --out runs/pv
    polar-vbll compare --task arc_easy --methods mle,polar_vbll --profile course --out results/demo
    polar-vbll compare --task obqa --methods mle,polar_vbll --ood obqa    (OBQA -> ARC, MMLU)
    polar-vbll checkpoints --list      (the notebooks' committed course-tier fine-tunes)
    accelerate launch --multi_gpu --num_processes 2 -m polar_vbll.cli finetune ...  (data
        parallel, GPUs or CPU; also torchrun --nproc_per_node 2 -m polar_vbll.cli ...;
        see polar_vbll.distributed)

Every command prints ACC / ECE / NLL / Brier and writes JSON (``compare`` also writes
``report.html`` with reliability diagrams). Errors in arguments, data or checkpoints are
reported in one line naming the argument and what was expected (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from polar_vbll.errors import ConfigError, PolarVBLLError


def _profile_name(name: str) -> str:
    """--profile's check: a profile name, an old name refused with the new ones to use."""
    from polar_vbll import profiles

    try:
        profiles.get_profile(name)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return name


def _parser() -> argparse.ArgumentParser:
    from polar_vbll import data, methods, models, profiles

    parser = argparse.ArgumentParser(
        prog="polar-vbll", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Data: POLAR_VBLL_DATA=<folder with the release files> (unset: Hugging Face "
               "hub). Sizes: POLAR_VBLL_PROFILE or --profile (smoke | course | full).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    profile_names = "{" + ",".join(profiles.PROFILES) + "}"
    tasks = ", ".join(data.task_names())

    def common(sub, task_required=True):
        sub.add_argument("--task", required=task_required, metavar="TASK",
                         help=f"task to train/evaluate on: {tasks}")
        sub.add_argument("--model", default=models.SMOLLM2,
                         help=f"backbone: {models.SMOLLM2!r} (packaged, offline), "
                              f"{models.TINY!r}, a local folder or a hub id")
        sub.add_argument("--profile", type=_profile_name, default=None, metavar=profile_names,
                         help="run size (default: POLAR_VBLL_PROFILE, else course)")
        sub.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        sub.add_argument("--out", default=None, help="output folder for JSON / report / "
                                                     "checkpoint")
        sub.add_argument("--no-progress", action="store_true", help="hide progress bars")
        if sub.prog.endswith("eval"):
            return
        sub.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                         help="override one profile size, e.g. --set steps=500 --set "
                              "batch_size=4 (repeatable; fields of polar_vbll.profiles.Profile)")
        sub.add_argument("--head-form", choices=["choice", "letter"], default=None,
                         help="how the classifier reads the model: 'choice' scores every "
                              "(question, choice) pair and starts at the zero-shot cloze "
                              "classifier; 'letter' reads the answer-letter logits of one "
                              "lettered prompt (default: the profile's, choice)")

    evaluate = commands.add_parser(
        "eval", help="zero-shot evaluation of the backbone",
        description="Zero-shot ACC / ECE / NLL / Brier of the backbone, scored two ways: "
                    "'letter' reads the answer-letter logits after the lettered choices (the "
                    "letter form's step 0); 'cloze' scores each choice text as a continuation "
                    "of the question (mean log-probability per token), the form in which small "
                    "models are usually evaluated and the step 0 of the choice form that every "
                    "method fine-tunes by default.")
    common(evaluate)
    evaluate.add_argument("--split", default="test", choices=list(data.SPLITS))
    evaluate.add_argument("--limit", type=int, default=None, help="first N questions only")
    evaluate.add_argument("--scoring", default="both", choices=["letter", "cloze", "both"],
                          help="which zero-shot classifier to score (default both)")

    finetune = commands.add_parser("finetune", help="fine-tune one method and evaluate it",
                                   description="Fine-tune one method on --task, evaluate on its "
                                               "test split, save a checkpoint in --out.")
    common(finetune)
    finetune.add_argument("--method", required=True, metavar="METHOD",
                          help=f"one of: {', '.join(methods.method_names())}")
    finetune.add_argument("--stiefel-method", default="landing",
                          choices=["landing", "geoopt", "retraction"],
                          help="how PoLAR's X and Y are trained (default landing)")
    finetune.add_argument("--resume", action="store_true",
                          help="continue from the checkpoint in --out/checkpoint")

    compare = commands.add_parser("compare", help="fine-tune several methods and compare",
                                  description="Fine-tune each method on --task; metrics on the "
                                              "test split and OOD tasks; results.json and "
                                              "report.html in --out.")
    common(compare)
    compare.add_argument("--methods", required=True,
                         help=f"comma-separated: {', '.join(methods.method_names())}")
    compare.add_argument("--ood", default=None,
                         help="comma-separated OOD tasks, or 'obqa' for the OBQA -> ARC-C, "
                              "ARC-E, MMLU protocol (needs --task obqa)")

    made = commands.add_parser(
        "checkpoints", help="train the notebooks' fine-tunes and commit them (load-or-train)",
        description="Train every fine-tune that the notebooks end with (polar_vbll.pretrained."
                    "course_runs) at --profile (default course) and write one checkpoint folder per "
                    "run into --out (default: the package's trained/ folder, which the notebooks "
                    "load from). Runs that already have a checkpoint are kept unless --retrain; "
                    "checkpoints that no run produces any more are removed.")
    made.add_argument("--profile", type=_profile_name, default="course", metavar=profile_names,
                      help="run size (default course: the profile whose checkpoints are committed)")
    made.add_argument("--out", default=None, help="checkpoint folder (default: polar_vbll/trained)")
    made.add_argument("--only", default=None, metavar="METHODS",
                      help="comma-separated methods to (re)train, e.g. mle,polar (default: all)")
    made.add_argument("--retrain", action="store_true", help="retrain runs that have a checkpoint")
    made.add_argument("--list", action="store_true", help="list the runs and their status only")
    made.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _profile(args):
    """The --profile with the --set FIELD=VALUE overrides applied (values parsed as JSON when
    they parse, e.g. 500, 2e-4, null, ["q_proj", "v_proj"]; else kept as text)."""
    from dataclasses import fields

    from polar_vbll import profiles

    profile = profiles.get_profile(args.profile)
    changes = {}
    known = {field.name for field in fields(profile)} - {"name"}
    for item in args.set:
        field, separator, text = item.partition("=")
        if not separator or field.strip() not in known:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                              f"{sorted(known)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        changes[field.strip()] = value
    return profile.with_overrides(**changes) if changes else profile


def _print_summary(title: str, summary: dict) -> None:
    print(f"{title}: ACC {100 * summary['accuracy']:.1f}%  ECE {100 * summary['ece']:.1f}%  "
          f"NLL {summary['nll']:.3f}  Brier {summary['brier']:.3f}  (n={summary['n']})")


def _write_json(folder, name: str, payload: dict) -> Path:
    from polar_vbll.checkpoints import atomic_write_text, ensure_writable_folder

    path = ensure_writable_folder(folder) / name
    atomic_write_text(path, json.dumps(payload, indent=1))
    return path


def run_eval(args) -> int:
    from polar_vbll import cloze, data, methods, metrics

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be a positive number of questions, got {args.limit}")
    examples = data.load_task(args.task, args.split, limit=args.limit)
    if args.out:
        from polar_vbll.checkpoints import ensure_writable_folder
        ensure_writable_folder(args.out)
    method = methods.make_method("zero_shot", profile=args.profile, model_name=args.model,
                                 seed=args.seed, progress=not args.no_progress,
                                 head_form="letter")  # 'cloze' below is the choice form's step 0
    scorings = ["letter", "cloze"] if args.scoring == "both" else [args.scoring]
    payload = {"task": args.task, "split": args.split, "model": args.model, "scorings": {}}
    for scoring in scorings:
        if scoring == "letter":
            record = method.predict(examples, progress=not args.no_progress)
        else:
            record = cloze.predict(method.model, method.tokenizer, examples,
                                   batch_size=max(1, method.profile.eval_batch_size // 4),
                                   max_length=method.profile.max_length,
                                   progress=not args.no_progress)
        summary = metrics.summarize(record["probs"], record["labels"])
        _print_summary(f"zero-shot {args.model} on {args.task}/{args.split} ({scoring})", summary)
        payload["scorings"][scoring] = {"metrics": summary, "probs": record["probs"].tolist()}
        payload["labels"] = record["labels"].tolist()
    if args.out:
        path = _write_json(args.out, f"eval_{args.task}_{args.split}.json", payload)
        print(f"wrote {path}")
    return 0


def run_finetune(args) -> int:
    from polar_vbll import distributed, methods, metrics
    from polar_vbll.checkpoints import ensure_writable_folder
    from polar_vbll.splits import load_splits

    profile = _profile(args)
    world = distributed.world()
    main = world.is_main  # under accelerate launch / torchrun: rank 0 writes
    if args.resume and not args.out:
        raise PolarVBLLError("--resume needs --out (the folder holding the checkpoint)")
    if args.out and main:
        ensure_writable_folder(args.out)
    splits = load_splits(args.task, profile, [])
    method = methods.make_method(args.method, profile=profile, model_name=args.model,
                                 seed=args.seed, progress=not args.no_progress and main,
                                 stiefel_method=args.stiefel_method, head_form=args.head_form)
    checkpoint = Path(args.out) / "checkpoint" if args.out else None
    method.fit(splits["train"], splits["validation"], checkpoint_dir=checkpoint,
               resume=args.resume)
    record = method.predict(splits[args.task])
    if not main:
        return 0
    summary = metrics.summarize(record["probs"], record["labels"])
    _print_summary(f"{args.method} on {args.task}/test"
                   + (f" ({world.size} processes)" if world.distributed else ""), summary)
    if args.out:
        method.save(Path(args.out) / "model")
        path = _write_json(args.out, "result.json", {
            "task": args.task, "method": args.method, "profile": profile.to_dict(),
            "processes": world.size, "metrics": summary,
            "seconds_per_example": record["seconds_per_example"],
            "history": method.history})
        print(f"wrote {path} and the model in {Path(args.out) / 'model'}")
    return 0


def run_compare(args) -> int:
    from polar_vbll import distributed, evaluation

    results = evaluation.compare(args.task, args.methods, profile=_profile(args),
                                 ood=args.ood, model_name=args.model, seed=args.seed,
                                 progress=not args.no_progress, out=args.out,
                                 method_options={"head_form": args.head_form})
    if not distributed.world().is_main:
        return 0
    print(evaluation.metrics_table(results))
    if args.out:
        print(f"report: {Path(args.out) / 'report.html'}")
        print(f"results: {Path(args.out) / 'results.json'}")
    return 0


def run_checkpoints(args) -> int:
    import shutil

    from polar_vbll import evaluation, run_store
    from polar_vbll.checkpoints import ensure_writable_folder
    from polar_vbll.runs import course_runs

    folder = Path(args.out) if args.out else run_store.FOLDER
    runs = course_runs(args.profile)
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        unknown = wanted - {run.method for run in runs}
        if unknown:
            raise ConfigError(f"--only: no course run uses {sorted(unknown)}; the runs use "
                              f"{sorted({run.method for run in runs})}")
        runs = [run for run in runs if run.method in wanted]
    for run in runs:
        path = folder / run.folder_name
        status = "committed" if (path / "run.json").is_file() else "missing"
        print(f"{status:>9}  {run.folder_name:<48} {run_store.folder_size(path) / 1e6:6.2f} MB")
    if args.list:
        total = sum(run_store.folder_size(path) for path in run_store.committed(folder))
        print(f"{len(run_store.committed(folder))} checkpoints, {total / 1e6:.2f} MB in {folder}")
        return 0
    ensure_writable_folder(folder)
    if args.retrain:
        for run in runs:
            shutil.rmtree(folder / run.folder_name, ignore_errors=True)
    groups: dict = {}  # one compare per (task, options, ood): post-hoc methods reuse its mle
    for run in runs:
        key = (run.task, tuple(sorted(run.options.items())), run.ood)
        groups.setdefault(key, []).append(run.method)
    for (task, options, ood), names in groups.items():
        print(f"== {task}{' ' + str(dict(options)) if options else ''}: {', '.join(names)}")
        evaluation.compare(task, names, profile=args.profile, ood=list(ood) or None,
                           progress=not args.no_progress, method_options=dict(options),
                           pretrained=True, checkpoint_folder=folder, save_checkpoints=folder)
    keep = {run.folder_name for run in course_runs(args.profile)}
    for path in run_store.committed(folder):
        if path.name not in keep and run_store.stale_reason(path):
            shutil.rmtree(path)
            print(f"removed {path.name}: no course run produces it any more")
    print(f"wrote {run_store.write_index(folder)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"eval": run_eval, "finetune": run_finetune, "compare": run_compare,
                "checkpoints": run_checkpoints}
    try:
        return handlers[args.command](args)
    except PolarVBLLError as error:
        print(f"polar-vbll {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
