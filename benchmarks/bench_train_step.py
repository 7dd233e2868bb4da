"""Training step time: PoLAR (landing) vs LoRA on SmolLM2-135M, plus PoLAR with geoopt / a retraction.

Every side is a ``polar_vbll.training.Trainer`` (cross-entropy, answer head) on its own copy of
the same backbone, with rank-r adapters on q_proj and v_proj from ``adapters.add_adapters``. A
timed call is one ``Trainer.train_step`` on the same batch of ``--batch`` prompts that all
encode to exactly ``--tokens`` tokens (BoolQ passages, cut from the start to that length), so
every side sees the same tensor shape. Sides alternate round-robin in one run.

    .venv/bin/python benchmarks/bench_train_step.py --repeats 8

Each side also counts the tensor operators and host reads of one step (Adam's multi-tensor path,
as on CUDA): on a GPU a step of this size waits on its kernel launches, so the operator ratio
is what the time ratio there follows.

``--precisions fp32,fp16,bf16`` runs every side in each of those formats instead of the device's
policy (float32 weights; no autocast, float16 autocast with the trainer's loss scaler, bfloat16
autocast), as sides ``<side>@<format>`` compared with the first: what float16 costs or saves
against float32, the choice a T4 faces (bf16 only where the GPU has it natively).

Target (issue): PoLAR + landing step <= 1.10 x the LoRA step.
"""

from __future__ import annotations

import copy
from functools import partial

import _common

_common.add_repo_to_path()

import torch  # noqa: E402

SIDES = {  # name -> (adapter kind, stiefel method)
    "lora": ("lora", "landing"),
    "polar_landing": ("polar", "landing"),
    "polar_geoopt": ("polar", "geoopt"),
    "polar_retraction_qr": ("polar", "retraction"),
}
TARGET = 1.10
PRECISIONS = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}  # --precisions -> accelerate's switch


def fixed_length_batch(tokenizer, task: str, batch: int, tokens: int):
    """``batch`` training examples of ``task`` whose prompt encodes to exactly ``tokens``."""
    from polar_vbll import data

    chosen = []
    for example in data.load_task(task, "train"):
        encoded = data.encode_examples(tokenizer, [example], max_length=tokens)
        if encoded["input_ids"].shape[1] == tokens:
            chosen.append(example)
            if len(chosen) == batch:
                return chosen
    raise SystemExit(f"fewer than {batch} {task} prompts reach {tokens} tokens; choose --task")


def one_step(trainer, world, examples) -> None:
    """One ``train_step`` on ``examples`` in ``world``'s format (the autocast is read per call)."""
    from polar_vbll import distributed

    distributed.set_world(world)
    trainer.train_step([examples])


def step_launches(trainer, step) -> dict:
    """Operators and host reads of one more step, with Adam's multi-tensor (``foreach``) path
    as CUDA runs it, also on a CPU: on a GPU a step this small is bound by its launches, so
    their ratio predicts the ratio of step times there."""
    groups = [group for optimizer in trainer.optimizers.values() for group in optimizer.param_groups]
    before = [group.get("foreach") for group in groups]
    for group in groups:
        group["foreach"] = True
    counters = [state["step"] for optimizer in trainer.optimizers.values()
                for state in optimizer.state.values() if "step" in state]
    with _common.operator_counter(host_tensors=counters) as counter:
        step()
    for group, value in zip(groups, before):
        group["foreach"] = value
    return {"operators": counter.count, "host_reads": counter.host_reads}


def main() -> None:
    parser = _common.base_parser(__doc__.splitlines()[0], default_repeats=8)
    parser.add_argument("--batch", type=int, default=4, help="prompts per step")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per prompt")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--task", default="boolq",
                        help="where the fixed-length prompts come from (needs long prompts)")
    parser.add_argument("--sides", default=",".join(SIDES),
                        help=f"comma-separated subset of {list(SIDES)}")
    parser.add_argument("--precisions", default=None,
                        help=f"comma-separated subset of {list(PRECISIONS)}: each side in each "
                             "format, float32 weights (default: the device's policy)")
    args = parser.parse_args()
    precisions = args.precisions.split(",") if args.precisions else [None]
    unknown = [p for p in precisions if p is not None and p not in PRECISIONS]
    if unknown:
        parser.error(f"--precisions {args.precisions!r}: expected a subset of {list(PRECISIONS)}")
    _common.apply_threads(args)
    profile = _common.resolve_profile(args.profile)
    device = _common.resolve_device(args.device)
    from polar_vbll import adapters, data, distributed, models
    from polar_vbll.training import AnswerHead, Trainer, TrainConfig

    dtype = torch.float32 if args.precisions else None  # None: the device's policy
    base, tokenizer = models.load_backbone(models.SMOLLM2, device=device, dtype=dtype)
    examples = fixed_length_batch(tokenizer, args.task, args.batch, args.tokens)
    shape = tuple(data.encode_examples(tokenizer, examples, args.tokens)["input_ids"].shape)
    head_weight = models.answer_head_weight(base, tokenizer, data.NUM_CLASSES)

    sides, trainers = {}, {}
    for side, precision in ((s, p) for s in args.sides.split(",") for p in precisions):
        name = side if precision is None else f"{side}@{precision}"
        world = distributed.World(mixed_precision=PRECISIONS.get(precision))
        distributed.set_world(world)  # the trainer's loss scaler follows the format
        kind, stiefel_method = SIDES[side]
        model = copy.deepcopy(base)
        adapters.add_adapters(model, kind=kind, rank=args.rank, alpha=args.alpha,
                              target_modules=("q_proj", "v_proj"), seed=0)
        config = TrainConfig(steps=10**6, batch_size=args.batch, max_length=args.tokens,
                             learning_rate=profile.learning_rate,
                             head_learning_rate=profile.head_learning_rate,
                             log_every=10**6, stiefel_method=stiefel_method)
        trainer = Trainer(model, tokenizer, AnswerHead(head_weight).to(device), config,
                          num_data=len(examples))
        trainers[name] = trainer
        sides[name] = partial(one_step, trainer, world, examples)
    del base

    times = _common.interleaved(sides, repeats=args.repeats, warmup=1, device=device)
    launches = {name: step_launches(trainer, sides[name]) for name, trainer in trainers.items()}
    distributed.set_world(None)
    measurements = {"batch_shape": list(shape), "rank": args.rank, "target_modules": ["q_proj", "v_proj"],
                    "seconds_per_step": {name: _common.summary(v) for name, v in times.items()},
                    "trainable_parameters": {
                        name: sum(p.numel() for o in t.optimizers.values()
                                  for g in o.param_groups for p in g["params"])
                        for name, t in trainers.items()},
                    "operators_per_step": {name: c["operators"] for name, c in launches.items()},
                    "host_reads_per_step": {name: c["host_reads"] for name, c in launches.items()}}
    reference = "lora" if "lora" in times else next(iter(times))
    ratios = {f"{name}_over_{reference}": _common.ratio(v, times[reference])
              for name, v in times.items() if name != reference}
    met = None
    lines = [f"training step, SmolLM2-135M, batch {shape[0]} x {shape[1]} tokens, rank "
             f"{args.rank} on q_proj, v_proj (profile {profile.name} learning rates)"]
    lines += _common.time_table(times, reference, unit="s", scale=1.0)
    lines += [f"{name}: {c['operators']} operators, {c['host_reads']} host reads a step "
              f"({c['operators'] / launches[reference]['operators']:.2f}x {reference})"
              for name, c in launches.items()]
    if "polar_landing_over_lora" in ratios:
        value = ratios["polar_landing_over_lora"]["ratio_of_medians"]
        met = bool(value <= TARGET)
        lines.append(f"PoLAR + landing / LoRA: {value:.3f}")
    payload = _common.result(
        "train_step", device, measurements, ratios,
        target=f"polar_landing step <= {TARGET:.2f} x lora step (ratio of medians)", met=met,
        profile=profile.name, repeats=args.repeats)
    _common.emit(payload, lines)


if __name__ == "__main__":
    main()
