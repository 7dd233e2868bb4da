"""Choice-form training step: each question's prompt once in the adapted top layers, or every row whole.

In the choice form every (question, choice) pair is one token row, and a question's rows begin
with the same prompt. The frozen lower layers run that prompt once per question when they fill
the feature cache; this benchmark measures the same sharing in the adapted top layers, which run
on every training step with gradients (``ChoiceForm(share_prompts=...)``,
``feature_cache.TopLayers``). Both sides are one real ``Trainer.train_step`` of ``--method`` at
the profile's settings on the same ``--batch`` ARC-Easy training questions (their lower layers'
states cached first), measured round-robin, for each ``--layers`` K adapted layers.

    .venv/bin/python benchmarks/bench_shared_prompts.py --profile course --repeats 10

Target: none (information); the shared side must be faster, and is checked to give the same
scores as the whole rows (``tests/test_choice.py`` checks the gradients).
"""

from __future__ import annotations

import _common

_common.add_repo_to_path()

import torch  # noqa: E402


def main() -> None:
    parser = _common.base_parser(__doc__.splitlines()[0], default_repeats=10)
    parser.add_argument("--method", default="polar_vbll", help="a training method of the library")
    parser.add_argument("--layers", default="2,4",
                        help="comma-separated numbers K of adapted top layers to measure")
    parser.add_argument("--batch", type=int, default=None,
                        help="questions per step (default: the profile's batch_size)")
    args = parser.parse_args()
    _common.apply_threads(args)
    profile = _common.resolve_profile(args.profile)
    device = _common.resolve_device(args.device)
    from polar_vbll import data
    from polar_vbll.methods import make_method
    from polar_vbll.training import Trainer

    try:
        layers = [int(k) for k in args.layers.split(",")]
    except ValueError:
        parser.error(f"--layers: expected comma-separated integers, got {args.layers!r}")
    questions = data.load_task("arc_easy", "train", limit=args.batch or profile.batch_size)
    sides, rows, checks = {}, {}, {}
    for k in layers:
        method = make_method(args.method, profile=profile.with_overrides(adapt_layers=k),
                             seed=0, progress=False)
        form = method.form
        form.prepare(questions)
        trainer = Trainer(method.model, method.tokenizer, method.head, method.train_config(0),
                          num_data=len(questions), form=form)
        for share in (False, True):
            def step(form=form, trainer=trainer, share=share):
                form.share_prompts = share
                trainer.train_step([questions])
            sides[f"K={k} {'shared' if share else 'whole'}"] = step
        with torch.no_grad():  # the two sides compute the same scores (up to float rounding)
            scores, batches = {}, {}
            for share in (False, True):
                form.share_prompts = share
                batches[share] = form.encode(questions)
                scores[share] = form.features(batches[share]).scores
            checks[f"K={k}"] = float((scores[True] - scores[False]).abs().max())
        batch, shared = batches[True], batches[True]["shared"]  # the rows, and what the top layers run
        rows[f"K={k}"] = {"rows": len(batch["rows"]), "row_tokens": int(batch["attention_mask"].sum()),
                          "padded_tokens": int(batch["attention_mask"].numel()),
                          "shared_tokens": int(shared["prefix_mask"].sum() + shared["tail_mask"].sum()),
                          "shared_padded_tokens": int(shared["prefix_mask"].numel()
                                                      + shared["tail_mask"].numel())}
    times = _common.interleaved(sides, repeats=args.repeats, warmup=1, device=device)
    ratios = {f"K={k} whole_over_shared": _common.ratio(times[f"K={k} whole"], times[f"K={k} shared"])
              for k in layers}
    lines = [f"{args.method} training step, {len(questions)} ARC-Easy questions, profile "
             f"{profile.name}: every row whole vs each prompt once in the top K layers"]
    lines += _common.time_table(times, f"K={layers[0]} shared", unit="s", scale=1.0)
    for k in layers:
        value = ratios[f"K={k} whole_over_shared"]["ratio_of_medians"]
        count = rows[f"K={k}"]
        lines.append(f"K={k}: whole / shared = {value:.2f}x; token positions through each top layer "
                     f"{count['padded_tokens']} -> {count['shared_padded_tokens']} with padding "
                     f"({count['row_tokens']} -> {count['shared_tokens']} without); "
                     f"max |score difference| {checks[f'K={k}']:.1e}")
    payload = _common.result(
        "shared_prompts", device,
        {"seconds_per_step": {name: _common.summary(v) for name, v in times.items()},
         "tokens": rows, "max_score_difference": checks, "method": args.method},
        ratios, target="none (information): whole / shared step time", met=None,
        profile=profile.name, repeats=args.repeats)
    _common.emit(payload, lines)


if __name__ == "__main__":
    main()
