"""One data-parallel fine-tune, run by tests/test_distributed.py under torchrun (or alone).

    torchrun --nproc_per_node 2 tests/ddp_worker.py OUT --model tiny --method polar_vbll
    python tests/ddp_worker.py OUT --model tiny --method polar_vbll --batch-size 8

Trains ``--method`` at the smoke profile with ``--batch-size`` questions per process, predicts
the test questions, and writes ``OUT/rank<r>.pt`` on every process: the loss curve (one value
per step) and each step's seconds, the adapters and head, and the prediction record.
benchmarks/bench_ddp.py times it too (``--adapt-layers``, ``--threads``, ``--no-predict``). Rank 0 also saves the method in
``OUT/model`` so that one process can re-evaluate the very same parameters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from polar_vbll import adapters, data, distributed, methods  # noqa: E402
from polar_vbll.profiles import get_profile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--method", default="polar_vbll")
    parser.add_argument("--batch-size", type=int, default=4, help="questions per process")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--train", type=int, default=32, help="training questions")
    parser.add_argument("--test", type=int, default=40, help="test questions")
    parser.add_argument("--adapt-layers", default="2",
                        help="adapted top layers ('all': full depth, no feature cache)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (the processes share the cores)")
    parser.add_argument("--no-predict", action="store_true", help="train only (benchmarks)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    world = distributed.world()
    profile = get_profile("smoke").with_overrides(
        batch_size=args.batch_size, steps=args.steps, train_examples=args.train,
        test_examples=args.test, eval_batch_size=8,
        adapt_layers=None if args.adapt_layers == "all" else int(args.adapt_layers))
    train = data.load_task("arc_easy", "train", limit=args.train)
    validation = data.load_task("arc_easy", "validation", limit=8)
    test = data.load_task("arc_easy", "test", limit=args.test)
    method = methods.make_method(args.method, profile=profile, model_name=args.model,
                                 progress=False)
    method.fit(train, validation)
    record = {} if args.no_predict else method.predict(test)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = [0.0] + [entry["seconds"] for entry in method.history]
    torch.save({"world_size": world.size, "rank": world.rank, "threads": args.threads,
                "losses": [entry["loss"] for entry in method.history],
                "step_seconds": [b - a for a, b in zip(clock, clock[1:])],
                "adapters": adapters.adapter_state_dict(method.adapters),
                "head": {k: v.detach().cpu() for k, v in method.head.state_dict().items()},
                "record": {k: v for k, v in record.items() if isinstance(v, torch.Tensor)}},
               out / f"rank{world.rank}.pt")
    if world.is_main:
        method.save(out / "model")


if __name__ == "__main__":
    main()
