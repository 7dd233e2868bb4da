"""Inference time per example: deterministic, VBLL (MC, probit), MC-dropout, ensemble, BLoB, TFB.

Every side is a ``polar_vbll.methods.make_method(...)`` and a timed call is
``method.predict(test_examples)`` on the same ARC-Easy test questions (the library's own
prediction path: batching, backbone pass(es), head, softmax). Training does not change the cost
of prediction, so the methods are used as built (zero-shot start), except the ensemble, which
needs its members: it is fitted for ``--ensemble-fit-steps`` steps per member first, and TFB,
whose posterior is built from a trained B: B gets small random entries and sigma = 0.05 (the
cost does not depend on either).
Sides alternate round-robin in one run, and each counts the tensor operators and host reads of
one more call (eager PyTorch launches about one GPU kernel per operator). The JSON also gives, per side, the backbone passes
and the sequences per question of one prediction (the choice form: one sequence per choice;
with the course profile's feature cache a pass reruns only the top ``adapt_layers`` layers).
BLoB (and PoLAR-BLoB) and TFB draw ``--samples`` adapter weight samples per question, one pass
each.

    .venv/bin/python benchmarks/bench_inference.py --repeats 3

Targets (issue): VBLL <= 1.05 x deterministic (same PoLAR backbone) and VBLL >= 8 x faster
than MC-dropout with 10 passes; BLoB and TFB with 10 samples each >= 5 x PoLAR-VBLL's time per
question.
"""

from __future__ import annotations

import _common

_common.add_repo_to_path()

SIDES = {  # name -> (method, options)
    "deterministic_polar": ("polar", {}),
    "vbll_mc": ("polar_vbll", {"predictive": "mc"}),
    "vbll_probit": ("polar_vbll", {"predictive": "probit"}),
    "deterministic_lora": ("mle", {}),
    "mc_dropout": ("mc_dropout", {}),
    "ensemble": ("ensemble", {}),
    "blob": ("blob", {}),
    "polar_blob": ("polar_blob", {}),
    "tfb": ("tfb", {}),
}
VBLL_OVER_DETERMINISTIC = 1.05
MC_DROPOUT_OVER_VBLL = 8.0
SAMPLED_ADAPTERS_OVER_VBLL = {"blob": 5.0, "tfb": 5.0}  # side -> least ratio to vbll_mc
TFB_SCALE = 0.05


def _as_trained_tfb(method) -> None:
    """Give a zero-shot tfb method the posterior a trained one has (random B, a stated sigma)."""
    import torch

    from polar_vbll import tfb

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for adapter in method.adapters.values():
            adapter.lora_B.copy_(0.01 * torch.randn(adapter.lora_B.shape, generator=generator))
    method.tfb = tfb.TFBPosterior(method.adapters, TFB_SCALE)


def main() -> None:
    parser = _common.base_parser(__doc__.splitlines()[0], default_repeats=3)
    parser.add_argument("--examples", type=int, default=16, help="ARC-Easy test questions per call")
    parser.add_argument("--passes", type=int, default=10, help="MC-dropout passes")
    parser.add_argument("--members", type=int, default=3, help="ensemble members")
    parser.add_argument("--samples", type=int, default=10,
                        help="weight samples of BLoB / PoLAR-BLoB / TFB (profile.adapter_samples)")
    parser.add_argument("--ensemble-fit-steps", type=int, default=1)
    parser.add_argument("--sides", default=",".join(SIDES), help=f"subset of {list(SIDES)}")
    args = parser.parse_args()
    _common.apply_threads(args)
    device = _common.resolve_device(args.device)
    profile = _common.resolve_profile(args.profile).with_overrides(
        mc_dropout_passes=args.passes, ensemble_members=args.members,
        adapter_samples=args.samples,
        steps=args.ensemble_fit_steps)
    from polar_vbll import data
    from polar_vbll.methods import make_method

    examples = data.load_task("arc_easy", "test")[: args.examples]
    sides, methods, records = {}, {}, {}
    for name in args.sides.split(","):
        method_name, options = SIDES[name]
        method = make_method(method_name, profile=profile, device=device, progress=False,
                             **options)
        if method_name == "ensemble":
            train = data.load_task("arc_easy", "train")[: profile.batch_size]
            method.fit(train)
        if method_name == "tfb":
            _as_trained_tfb(method)
        methods[name] = method
        sides[name] = (lambda m=method, n=name: records.__setitem__(n, m.predict(examples)))

    times = _common.interleaved(sides, repeats=args.repeats, warmup=1, device=device)
    launches = {}
    for name, method in methods.items():
        with _common.operator_counter() as counter:
            method.predict(examples)
        launches[name] = {"operators": counter.count, "host_reads": counter.host_reads}
    per_example = {name: [t / len(examples) for t in v] for name, v in times.items()}
    measurements = {
        "examples_per_call": len(examples), "eval_batch_size": profile.eval_batch_size,
        "last_layer_samples": profile.last_layer_samples, "mc_dropout_passes": args.passes,
        "ensemble_members": args.members, "adapter_samples": args.samples,
        "head_form": profile.head_form,
        "adapt_layers": profile.adapt_layers,
        # what one prediction runs per question: backbone passes, and the sequences they hold
        # (the choice form runs one sequence per (question, choice) pair in each pass; with
        # adapt_layers only the top layers rerun, the lower ones are cached)
        "backbone_passes": {n: r["backbone_passes"] for n, r in records.items()},
        "sequences_per_question": {n: r["sequences_per_question"] for n, r in records.items()},
        "seconds_per_example": {name: _common.summary(v) for name, v in per_example.items()},
        # a GPU call this small waits on its kernel launches and host reads more than on its
        # arithmetic: where the time ratio there is far from the operator ratio, it does not
        "operators_per_call": {n: c["operators"] for n, c in launches.items()},
        "host_reads_per_call": {n: c["host_reads"] for n, c in launches.items()}}
    reference = "deterministic_polar" if "deterministic_polar" in times else next(iter(times))
    ratios = {f"{name}_over_{reference}": _common.ratio(v, per_example[reference])
              for name, v in per_example.items() if name != reference}
    checks, lines = [], [f"inference per example, {len(examples)} ARC-Easy test questions per "
                         f"call (profile {profile.name}: {profile.last_layer_samples} last-layer "
                         f"samples, batch {profile.eval_batch_size})"]
    lines += _common.time_table(per_example, reference, unit="ms", scale=1e3)
    if {"vbll_mc", "deterministic_polar"} <= set(times):
        value = ratios["vbll_mc_over_deterministic_polar"]["ratio_of_medians"]
        checks.append(value <= VBLL_OVER_DETERMINISTIC)
        lines.append(f"VBLL (mc) / deterministic (same PoLAR backbone): {value:.3f}")
    if {"vbll_mc", "mc_dropout"} <= set(times):
        ratios["mc_dropout_over_vbll_mc"] = _common.ratio(per_example["mc_dropout"],
                                                          per_example["vbll_mc"])
        value = ratios["mc_dropout_over_vbll_mc"]["ratio_of_medians"]
        checks.append(value >= MC_DROPOUT_OVER_VBLL)
        lines.append(f"MC-dropout-{args.passes} / VBLL (mc): {value:.2f}")
    for name, least in SAMPLED_ADAPTERS_OVER_VBLL.items():
        if {"vbll_mc", name} <= set(times):
            ratios[f"{name}_over_vbll_mc"] = _common.ratio(per_example[name], per_example["vbll_mc"])
            value = ratios[f"{name}_over_vbll_mc"]["ratio_of_medians"]
            checks.append(value >= least)
            lines.append(f"{name}-{args.samples} / VBLL (mc): {value:.2f}")
    lines.append("per call: " + ", ".join(
        f"{n} {c['operators']} operators ({c['operators'] / launches[reference]['operators']:.2f}x), "
        f"{c['host_reads']} host reads" for n, c in launches.items()))
    lines.append("per question: " + ", ".join(
        f"{n} {r['backbone_passes']} pass(es), {r['sequences_per_question']:.2f} sequences"
        for n, r in records.items()))
    payload = _common.result(
        "inference", device, measurements, ratios,
        target=f"vbll_mc <= {VBLL_OVER_DETERMINISTIC} x deterministic_polar and mc_dropout "
               f"({args.passes} passes) >= {MC_DROPOUT_OVER_VBLL:g} x vbll_mc and blob, tfb "
               f"({args.samples} samples) >= {SAMPLED_ADAPTERS_OVER_VBLL['blob']:g} x vbll_mc "
               "(ratios of medians)",
        met=all(checks) if checks else None, profile=profile.name, repeats=args.repeats)
    _common.emit(payload, lines)


if __name__ == "__main__":
    main()
