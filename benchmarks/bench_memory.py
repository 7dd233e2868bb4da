"""Peak memory of training, per method, each in its own subprocess so the peaks are separate.

A child process builds ``methods.make_method(name, profile)`` (backbone, adapters, head), loads
the training questions, then measures around ``method.fit(train, validation)`` only:

* CPU: peak RSS growth = (highest RSS during fit) - (RSS just before fit). With psutil the RSS
  is sampled every 5 ms by a thread; without it, ``resource.getrusage`` ``ru_maxrss`` (the
  process's lifetime peak) minus the RSS before fit, a lower bound when loading peaked higher.
* CUDA: ``torch.cuda.max_memory_allocated`` during fit (after ``reset_peak_memory_stats``).

Methods run round-robin, ``--repeats`` times each; the ratio of each method to the baseline is
a ratio of medians. One untimed child of the baseline runs first, so that every measured child
finds the frozen layers' feature cache (``POLAR_VBLL_CACHE``) built: otherwise the first child
alone would pay for building it, and its peak would be the cache's, not its training's.

    .venv/bin/python benchmarks/bench_memory.py --profile smoke
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import _common

_common.add_repo_to_path()

DEFAULT_METHODS = "mle,map,polar,lora_vbll,polar_vbll,mc_dropout,ensemble,temperature,laplace"


def rss_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return None
    return psutil.Process().memory_info().rss


def child(args) -> None:
    import resource

    import torch

    from polar_vbll import data
    from polar_vbll.methods import make_method

    device = _common.resolve_device(args.device)
    profile = _common.resolve_profile(args.profile)
    if args.steps:
        profile = profile.with_overrides(steps=args.steps)
    method = make_method(args.child, profile=profile, device=device, progress=False)
    train = data.load_task(args.task, "train")[: profile.train_examples]
    validation = data.load_task(args.task, "validation")[: profile.validation_examples]
    try:
        import psutil  # noqa: F401
        sampler = "psutil"
    except ImportError:
        sampler = "ru_maxrss"
    before = rss_bytes()
    peak = [before or 0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            value = rss_bytes()
            if value and value > peak[0]:
                peak[0] = value
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True) if sampler == "psutil" else None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    if thread:
        thread.start()
    start = time.perf_counter()
    method.fit(train, validation)
    seconds = time.perf_counter() - start
    done.set()
    if thread:
        thread.join()
    report = {"method": args.child, "sampler": sampler, "fit_seconds": seconds,
              "rss_before_fit_bytes": before, "steps": profile.steps,
              "members": max(1, method.spec.members)}
    if sampler == "ru_maxrss":
        peak[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report["rss_peak_bytes"] = peak[0]
    report["rss_peak_growth_bytes"] = peak[0] - (before or 0)
    if device.type == "cuda":
        report["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        report["cuda_peak_growth_bytes"] = report["cuda_peak_allocated_bytes"] - cuda_before
    print("BENCH_MEMORY " + json.dumps(report), flush=True)


def main() -> None:
    parser = _common.base_parser(__doc__.splitlines()[0], default_repeats=1)
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help="comma-separated methods; the first is the baseline of the ratios")
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--steps", type=int, default=20,
                        help="training steps per method (default 20: every step allocates the same "
                             "activations and optimizer state, so the peak is reached early; "
                             "0: the profile's steps)")
    parser.add_argument("--child", default=None, help=argparse_suppress())
    args = parser.parse_args()
    _common.apply_threads(args)
    if args.child:
        return child(args)
    profile = _common.resolve_profile(args.profile)
    device = _common.resolve_device(args.device)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    key = "cuda_peak_growth_bytes" if device.type == "cuda" else "rss_peak_growth_bytes"
    values = {name: [] for name in names}
    reports = {name: [] for name in names}

    def run_child(name: str) -> dict:
        command = [sys.executable, os.path.abspath(__file__), "--child", name,
                   "--profile", profile.name, "--task", args.task, "--device", str(device)]
        if args.steps:
            command += ["--steps", str(args.steps)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True)
        line = [l for l in done.stdout.splitlines() if l.startswith("BENCH_MEMORY ")]
        if done.returncode or not line:
            sys.stderr.write(done.stderr[-3000:])
            raise SystemExit(f"child for {name} failed (exit {done.returncode})")
        return json.loads(line[-1][len("BENCH_MEMORY "):])

    run_child(names[0])  # untimed: builds the feature cache every measured child then reads
    for round_index in range(args.repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            report = run_child(name)
            reports[name].append(report)
            values[name].append(report[key] / 2**20)
    baseline = names[0]
    measurements = {"metric": key.replace("_bytes", "_MiB"), "sampler": reports[baseline][0]["sampler"],
                    "steps": reports[baseline][0]["steps"],
                    "MiB": {name: _common.summary(v) for name, v in values.items()},
                    "runs": reports}
    ratios = {f"{name}_over_{baseline}": _common.ratio(values[name], values[baseline])
              for name in names[1:]}
    header = f"{'method':<14} {'median MiB':>11} {'min':>8} {'max':>8} {'x ' + baseline:>10}"
    lines = [f"peak memory growth during fit ({measurements['metric']}, profile {profile.name}, "
             f"{measurements['steps']} steps, one subprocess per method and repeat)",
             header, "-" * len(header)]
    base_median = _common.summary(values[baseline])["median"]
    for name, v in values.items():
        s = _common.summary(v)
        lines.append(f"{name:<14} {s['median']:>11.1f} {s['min']:>8.1f} {s['max']:>8.1f} "
                     f"{s['median'] / base_median if base_median else float('nan'):>10.2f}")
    payload = _common.result(
        "memory", device, measurements, ratios,
        target="none set by the issue (reported for information)", met=None,
        headline={f"{name}: {key.removesuffix('_bytes').replace('_', ' ')} of fit, median":
                  f"{_common.summary(v)['median']:.0f} MiB" for name, v in values.items()},
        notes="smoke profile: few steps; peaks of the optimizer state and activations are "
              "reached in the first step, so the figure is close to a longer run's"
              if profile.name == "smoke" else "", profile=profile.name, repeats=args.repeats)
    _common.emit(payload, lines)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
