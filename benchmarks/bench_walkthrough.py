"""The walkthrough: each notebook's live fine-tune and its whole run, on the device found.

What a learner waits for in a Colab / GPU walkthrough, measured on this machine (CPU rows are
always possible, so the table always has one). For each notebook, in order, with one fresh
``POLAR_VBLL_CACHE`` folder for the whole run (a new Colab runtime: the backbone is converted and
the frozen layers' features are computed once, then shared by the later notebooks):

* ``live``: the notebook's final fine-tune (:data:`LIVE`, the run it marks ``live=True``),
  trained by ``pretrained.train`` in a child process: seconds, steps, seconds per step (the fit's
  seconds over its steps: loading and the feature cache of its questions included) and peak
  memory (CUDA: ``max_memory_allocated``; CPU: the child's peak RSS);
* ``notebook``: the whole notebook executed by nbclient as a learner runs it on a GPU with
  nothing set, its final fine-tune trained live (``POLAR_VBLL_LIVE=1`` is set on a CPU so that a
  CPU row measures the same work);
* ``loaded``: the whole notebook with every fine-tune loaded (``POLAR_VBLL_LIVE=0``), as a CPU
  learner runs it with nothing set: the CPU column of the README, and on a GPU-less machine the
  part of a GPU walkthrough that is not the live fine-tune;
* ``flops``: floating-point operations (``torch.utils.flop_counter``) of one training step of the
  live fine-tune (the difference of a 2-step and a 1-step fit on 4 questions) and of everything
  else the live run computes (``fixed_flops``: a 1-step run of the same configuration from an
  empty feature cache: the frozen layers over every train, validation, test and OOD question and
  the predictions; counted once per task and method), and the tensor operators of one step. A
  GPU that is not here is estimated as seconds = fixed FLOPs / (peak x efficiency) + (steps - 1) x
  max(a step's FLOPs / (peak x efficiency), its operators x ``--operator-seconds``): a step of
  small matrices waits on launching its operators more than on arithmetic; with ``loaded`` also
  measured, a whole notebook as the loaded notebook's seconds here plus that estimate (on a CPU an
  upper bound for the rest, which a GPU runs faster). ``--peak`` and ``--efficiency`` name the GPU
  and the efficiency; on a GPU the measured efficiency is reported.

    .venv/bin/python benchmarks/bench_walkthrough.py --profile smoke
    .venv/bin/python benchmarks/bench_walkthrough.py --parts loaded,flops   # the README's rows
    .venv/bin/python benchmarks/bench_walkthrough.py --notebooks 01 --parts live,flops

Targets (issue): on an H100 / H200 every notebook <= 3 min; a T4 (estimated) every notebook
<= 10 min and its live fine-tune <= 5 min.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

_common.add_repo_to_path()

REPO = Path(__file__).resolve().parents[1]
# each notebook's final fine-tune (the fit_or_load call it marks live=True): method, task, OOD sets
LIVE = {"00": ("mle", "arc_easy", False), "01": ("mle", "arc_easy", False),
        "02": ("polar", "arc_easy", False), "03": ("polar", "arc_easy", False),
        "04": ("lora_vbll", "arc_easy", False), "05": ("polar_vbll", "arc_easy", False),
        "06": ("polar_vbll", "obqa", True)}
PARTS = ("live", "notebook", "loaded", "flops")
T4_TARGETS = {"live": 300, "notebook": 600}  # seconds (issue 31)
# dense peak FLOP/s in the precision devices.py gives each (data sheets): for a measured efficiency
DEVICE_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "T4": 8.1e12}
T4_FLOAT32_PEAK = DEVICE_PEAKS["T4"]  # the T4 runs float32 here: it has no native bfloat16
# host seconds per operator launched by eager PyTorch on a GPU (typical of its dispatcher and the
# CUDA launch, a few microseconds each, on a slower host such as Colab's): an assumption
OPERATOR_SECONDS = 10e-6


def notebook_path(number: str) -> Path:
    matches = sorted((REPO / "notebooks").glob(f"{number}_*.ipynb"))
    if not matches:
        raise SystemExit(f"--notebooks: no notebook {number}_*.ipynb in {REPO / 'notebooks'}")
    return matches[0]


def live_run(profile, number: str):
    """Notebook ``number``'s live fine-tune as a :class:`polar_vbll.runs.Run`."""
    from polar_vbll import evaluation, pretrained

    method, task, ood = LIVE[number]
    return pretrained.Run(method, task, profile, ood=evaluation.OOD_PROTOCOL if ood else ())


def child_live(profile_name: str, number: str, device: str) -> dict:
    """Train notebook ``number``'s live fine-tune here; its seconds, steps and peak memory."""
    import resource

    import torch

    from polar_vbll import pretrained
    from polar_vbll.profiles import get_profile

    run = live_run(get_profile(profile_name), number)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    fitted = pretrained.train(run, progress=False, say=lambda _: None)
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"method": run.label, "seconds": fitted.fit_seconds, "steps": run.profile.steps,
            "seconds_per_step": fitted.fit_seconds / run.profile.steps,
            "peak_memory_bytes": peak, "task": run.task, "metrics": fitted.metrics[run.task]}


def child_flops(profile_name: str, number: str) -> dict:
    """FLOPs of one training step of notebook ``number``'s live fine-tune (2-step minus 1-step
    fit of the same 4 questions, so the feature cache and set-up cancel)."""
    from torch.utils.flop_counter import FlopCounterMode

    from polar_vbll import data
    from polar_vbll.methods import make_method
    from polar_vbll.profiles import get_profile

    method_name, task, _ = LIVE[number]
    base = get_profile(profile_name)
    questions = data.load_task(task, "train")[: base.batch_size]
    validation = data.load_task(task, "validation")[: base.batch_size]
    counts = {}
    for steps in (1, 1, 2):  # the first fit fills the feature cache, so both counted fits read it
        profile = base.with_overrides(steps=steps, train_examples=len(questions))
        method = make_method(method_name, profile=profile, progress=False)
        with FlopCounterMode(display=False) as counter, _common.operator_counter() as operators:
            method.fit(questions, validation)
        counts[steps] = (counter.get_total_flops(), operators.count)
    return {"flops_per_step": counts[2][0] - counts[1][0],
            "operators_per_step": counts[2][1] - counts[1][1]}


def child_fixed(profile_name: str, number: str) -> dict:
    """FLOPs of notebook ``number``'s live run with one step, from an empty feature cache (the
    converted backbone is reused): everything the live run computes besides its steps."""
    from torch.utils.flop_counter import FlopCounterMode

    from polar_vbll import models, pretrained
    from polar_vbll.profiles import get_profile

    shared = models.cache_dir()
    with tempfile.TemporaryDirectory() as empty:
        for entry in shared.glob("*"):
            if entry.is_dir() and "features" not in entry.name:
                os.symlink(entry, Path(empty) / entry.name)
        os.environ["POLAR_VBLL_CACHE"] = empty
        run = live_run(get_profile(profile_name).with_overrides(steps=1), number)
        with FlopCounterMode(display=False) as counter:
            pretrained.train(run, progress=False, say=lambda _: None)
    return {"fixed_flops": counter.get_total_flops()}


def device_peak(device) -> float | None:
    """This GPU's peak FLOP/s from :data:`DEVICE_PEAKS` (None on a CPU or an unlisted GPU)."""
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in DEVICE_PEAKS.items() if key in name), None)


def run_child(kind: str, args, number: str, cache: str) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--profile", args.profile,
               "--notebooks", number, "--device", args.device or ""]
    env = {**os.environ, "POLAR_VBLL_CACHE": cache}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{kind} of notebook {number} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_notebook(number: str, profile_name: str, live: bool) -> dict:
    """Execute notebook ``number`` in a fresh kernel, its final fine-tune trained live (as on a
    GPU with nothing set) or loaded (as on a CPU with nothing set)."""
    import nbformat
    from nbclient import NotebookClient

    from polar_vbll import kernel_poll

    kernel_poll.install()  # a missed wakeup of the client costs a second, not the 1800 s limit
    # a child process of its own (run_child): the kernel inherits this environment
    os.environ.update({"POLAR_VBLL_PROFILE": profile_name, "TQDM_DISABLE": "1",
                       "POLAR_VBLL_LIVE": "1" if live else "0"})
    with tempfile.TemporaryDirectory() as folder:
        notebook = nbformat.read(notebook_path(number), as_version=4)
        start = time.perf_counter()
        NotebookClient(notebook, timeout=1800, kernel_name="python3",
                       resources={"metadata": {"path": folder}}).execute()
        seconds = time.perf_counter() - start
    live_lines = [line for cell in notebook.cells for output in cell.get("outputs", [])
                  for line in output.get("text", "").splitlines() if "trained here on" in line]
    return {"seconds": seconds, "live_line": live_lines[0] if live_lines else None}


def main() -> None:
    parser = _common.base_parser(__doc__.splitlines()[0], default_repeats=1)
    parser.add_argument("--notebooks", default=",".join(LIVE),
                        help="comma-separated notebook numbers")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    parser.add_argument("--peak", type=float, default=T4_FLOAT32_PEAK,
                        help="FLOP/s of the GPU to estimate (default: a T4 in float32)")
    parser.add_argument("--operator-seconds", type=float, default=OPERATOR_SECONDS,
                        help="host time to launch one operator on the GPU estimated (a step "
                             "takes at least its operators times this)")
    parser.add_argument("--efficiency", type=float, action="append", default=None,
                        help="fraction of --peak a step reaches there (repeatable; default "
                             "0.05 and 0.2 as a bracket, or what this GPU measured)")
    parser.add_argument("--child", choices=["live", "flops", "fixed", "notebook", "loaded"], help=argparse_hidden())
    args = parser.parse_args()
    args.profile = args.profile or os.environ.get("POLAR_VBLL_PROFILE") or "course"
    _common.apply_threads(args)
    if args.child:
        children = {"live": lambda: child_live(args.profile, args.notebooks, args.device or "cpu"),
                    "flops": lambda: child_flops(args.profile, args.notebooks),
                    "fixed": lambda: child_fixed(args.profile, args.notebooks),
                    "notebook": lambda: time_notebook(args.notebooks, args.profile, live=True),
                    "loaded": lambda: time_notebook(args.notebooks, args.profile, live=False)}
        result = children[args.child]()
        print(json.dumps(result))
        return
    device = _common.resolve_device(args.device)
    args.device = str(device)
    from polar_vbll.errors import ConfigError

    try:
        _common.resolve_profile(args.profile)  # an unknown name: one clear line, before any work
    except ConfigError as error:
        raise SystemExit(f"--profile: {error}") from None
    numbers = [n.strip() for n in args.notebooks.split(",") if n.strip()]
    unknown = [n for n in numbers if n not in LIVE]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown or not numbers or set(parts) - set(PARTS):
        raise SystemExit(f"--notebooks {args.notebooks!r} / --parts {args.parts!r}: expected "
                         f"numbers from {list(LIVE)} and parts from {list(PARTS)}")
    rows, fixed = {}, {}
    with tempfile.TemporaryDirectory() as cache:
        for number in numbers:
            row = rows[number] = {"notebook": notebook_path(number).stem}
            if "live" in parts:
                row["live"] = run_child("live", args, number, cache)
            if "notebook" in parts:  # each in its own process, as a fresh runtime
                row["notebook_run"] = run_child("notebook", args, number, cache)
            if "loaded" in parts:
                row["loaded_run"] = run_child("loaded", args, number, cache)
            if "flops" in parts:
                row.update(run_child("flops", args, number, cache))
                if LIVE[number] not in fixed:  # the same run in another notebook: counted once
                    fixed[LIVE[number]] = run_child("fixed", args, number, cache)["fixed_flops"]
                row["fixed_flops"] = fixed[LIVE[number]]
    efficiencies = args.efficiency or [0.05, 0.2]
    steps = _common.resolve_profile(args.profile).steps
    own_peak = device_peak(device)
    lines = [f"{'notebook':<32} {'live s':>8} {'s/step':>7} {'peak GiB':>9} {'notebook s':>11} "
             f"{'loaded s':>9} {'GFLOP/step':>11} {'T4 live s':>13}"]
    for number, row in rows.items():
        live = row.get("live", {})
        if "flops_per_step" in row:
            row["live_flops"] = row["fixed_flops"] + (steps - 1) * row["flops_per_step"]
            if device.type == "cuda" and live and own_peak:
                row["efficiency_measured"] = row["live_flops"] / live["seconds"] / own_peak
            # each step takes at least its operators' launches (host-bound small matrices)
            step_floor = row["operators_per_step"] * args.operator_seconds
            row["estimate"] = {f"{e:g}": row["fixed_flops"] / (args.peak * e) + (steps - 1)
                               * max(row["flops_per_step"] / (args.peak * e), step_floor)
                               for e in efficiencies}
            if "loaded_run" in row:
                row["notebook_estimate"] = {e: row["loaded_run"]["seconds"] + seconds
                                            for e, seconds in row["estimate"].items()}
        lines.append(
            f"{row['notebook']:<32} {live.get('seconds', float('nan')):>8.1f} "
            f"{live.get('seconds_per_step', float('nan')):>7.3f} "
            f"{live.get('peak_memory_bytes', float('nan')) / 2**30:>9.2f} "
            f"{row.get('notebook_run', {}).get('seconds', float('nan')):>11.1f} "
            f"{row.get('loaded_run', {}).get('seconds', float('nan')):>9.1f} "
            f"{row.get('flops_per_step', float('nan')) / 1e9:>11.2f} "
            f"{' - '.join(f'{v:.0f}' for v in row.get('estimate', {}).values()) or '-':>13}")
    notebooks = [row["notebook_run"]["seconds"] for row in rows.values() if "notebook_run" in row]
    met = None
    if device.type == "cuda" and notebooks:
        met = max(notebooks) <= 180
    payload = _common.result(
        "walkthrough", device, {"profile": args.profile, "notebooks": rows,
                                "estimated_peak_flops": args.peak, "efficiencies": efficiencies,
                                "operator_seconds": args.operator_seconds}, {},
        "on an H100 / H200 every notebook <= 180 s; T4 estimates: live fine-tune <= "
        f"{T4_TARGETS['live']} s, notebook <= {T4_TARGETS['notebook']} s", met,
        notes="estimate = fixed_flops / (peak x efficiency) + (steps - 1) x max(flops_per_step "
              "/ (peak x efficiency), operators_per_step x operator_seconds); "
              "notebook_estimate = the loaded notebook's seconds here + estimate; the "
              "efficiencies are assumed unless measured on a GPU (efficiency_measured, against "
              "that GPU's peak in DEVICE_PEAKS)")
    _common.emit(payload, lines)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
