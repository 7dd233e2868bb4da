"""Data-parallel training throughput on the CPU: 2 processes (gloo) vs 1, same global batch.

Each side is a real job of tests/ddp_worker.py (SmolLM2-135M, polar_vbll, smoke-profile sizes
with ``--steps`` steps) started fresh every round:

* ``one_process``   -- 1 process, ``--threads`` torch threads, global batch B;
* ``two_processes`` -- ``torchrun --nproc_per_node 2``, 1 thread each, B / 2 per process,
  gradients summed over gloo every step (polar_vbll.distributed).

Both use the machine's cores the same way (``--threads`` = the cores, default 2). The time of a
side is the median step time after the first (warm-up) step, so loading the model and the
feature cache are not counted; throughput = B / step time. Sides alternate round-robin, the
claim is the ratio of throughputs (2 processes / 1). Two settings by default: the course profile's
(adapters in the top ``adapt_layers`` layers over cached lower layers: little compute per step,
so the all-reduce and process overheads show) and full depth (``adapt_layers=None``, the
``full`` profile's).

    .venv/bin/python benchmarks/bench_ddp.py --repeats 2

No target in the issue: on a 2-core machine two processes cannot beat one process using both
cores by much; the number says what data parallelism costs here, so that a multi-device user
knows the overhead is small (ratio near 1) or not.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import _common

_common.add_repo_to_path()

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "ddp_worker.py"
sys.path.insert(0, str(REPO / "tests"))

from browser import free_port  # noqa: E402  (tests/browser.py: a free loopback port)


def run_side(processes: int, threads: int, batch: int, steps: int, adapt_layers: str) -> float:
    """Median seconds per optimizer step (after the first) of one fresh job."""
    with tempfile.TemporaryDirectory() as folder:
        worker = [str(WORKER), folder, "--model", "smollm2-135m", "--method", "polar_vbll",
                  "--steps", str(steps), "--train", str(max(64, batch * steps)),
                  "--batch-size", str(batch // processes), "--adapt-layers", adapt_layers,
                  "--threads", str(threads if processes == 1 else 1), "--no-predict"]
        launcher = [sys.executable] if processes == 1 else [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
            f"--master_port={free_port()}"]
        environment = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO),
                       "OMP_NUM_THREADS": str(threads if processes == 1 else 1)}
        finished = subprocess.run(launcher + worker, capture_output=True, text=True,
                                  env=environment, cwd=REPO)
        if finished.returncode:
            raise SystemExit(f"side with {processes} process(es) failed:\n"
                             f"{(finished.stdout + finished.stderr)[-3000:]}")
        result = torch.load(Path(folder) / "rank0.pt")
    return statistics.median(result["step_seconds"][1:])


def main() -> None:
    parser = _common.base_parser(__doc__.splitlines()[0], default_repeats=2)
    parser.add_argument("--batch", type=int, default=8, help="global batch (questions per step)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per job")
    parser.add_argument("--settings", default="2,all",
                        help="comma-separated adapt_layers values ('all' = full depth)")
    args = parser.parse_args()
    threads = args.threads or 2
    measurements, ratios, lines = {}, {}, []
    for setting in args.settings.split(","):
        sides = {"one_process": (1, threads), "two_processes": (2, threads)}
        times = {name: [] for name in sides}
        for round_index in range(args.repeats):
            order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
            for name in order:
                processes, side_threads = sides[name]
                times[name].append(run_side(processes, side_threads, args.batch, args.steps,
                                            setting))
        label = f"adapt_layers={setting}"
        measurements[label] = {name: _common.summary(values) for name, values in times.items()}
        # throughput ratio = (B / t_two) / (B / t_one) = t_one / t_two
        ratios[label] = _common.ratio(times["one_process"], times["two_processes"])
        lines += [f"-- {label}, global batch {args.batch}, {threads} cores",
                  *_common.time_table(times, "one_process", unit="s", scale=1.0),
                  f"throughput 2 processes / 1: {ratios[label]['ratio_of_medians']:.2f}x"]
    payload = _common.result(
        "ddp_throughput", "cpu", measurements, ratios,
        target="none (report the 2-process / 1-process throughput ratio)", met=None,
        notes="ratio = one_process step time / two_processes step time, same global batch; "
              "model loading and feature cache excluded",
        global_batch=args.batch, steps=args.steps, cores=threads)
    _common.emit(payload, lines)


if __name__ == "__main__":
    main()
