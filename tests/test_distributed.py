"""Data parallelism (polar_vbll.distributed): 2-process gloo runs on the CPU, checked against one.

The multi-process tests start real jobs with ``torchrun`` and ``accelerate launch`` (loopback
only) running tests/ddp_worker.py or the CLI, and compare with one process:

* 2 processes x batch b follow the loss curve of 1 process x batch 2b (to 1e-5 on ``tiny``);
* both ranks end with bit-identical adapters (PoLAR's X, Y, Theta) and heads;
* the sharded, gathered evaluation equals one process evaluating the same parameters
  (ACC exactly, ECE and NLL to 1e-6);
* accelerate's gradient accumulation (``ACCELERATE_GRADIENT_ACCUMULATION_STEPS``) gives the same
  steps as a larger batch;
* the CLI's finetune and compare run unchanged under ``accelerate launch`` and ``torchrun``,
  write their results once, and resume a checkpoint on another number of processes.

Measured on the 2-core machine: about 1.5 minutes for the whole file (README, "Past one device").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from browser import free_port
from polar_vbll import distributed, metrics
from polar_vbll.distributed import World
from polar_vbll.errors import ConfigError
from polar_vbll.methods import Method

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "ddp_worker.py"
LAUNCH_TIMEOUT = 600


def launch(arguments: list[str], launcher: str = "torchrun", processes: int = 2,
           extra: list[str] = (), environment: dict | None = None) -> str:
    """Run ``arguments`` (a script and its options, or ``-m module ...``) on ``processes``."""
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                   f"--master_port={free_port()}", *extra, *arguments]
    elif launcher == "accelerate":
        # accelerate's multi-process launcher is --multi_gpu even without GPUs (--cpu would
        # start one process); without CUDA polar_vbll.distributed joins the processes over gloo
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                   f"--num_processes={processes}", f"--main_process_port={free_port()}",
                   "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", *extra,
                   *arguments]
    else:  # one plain process
        command = [sys.executable, *arguments]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
                   "PYTHONPATH": str(REPO), **(environment or {})}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment,
                              timeout=LAUNCH_TIMEOUT, cwd=REPO)
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, f"{' '.join(command)} failed:\n{output[-4000:]}"
    return output


def ranks(folder: Path, count: int) -> list[dict]:
    return [torch.load(folder / f"rank{r}.pt") for r in range(count)]


def assert_same_steps(many: dict, one: dict, tolerance: float) -> None:
    assert len(many["losses"]) == len(one["losses"])
    for step, (a, b) in enumerate(zip(many["losses"], one["losses"]), start=1):
        assert a == pytest.approx(b, abs=tolerance), f"step {step}: loss {a} vs {b}"
    for name, value in many["adapters"].items():
        gap = (value - one["adapters"][name]).abs().max().item()
        assert gap <= tolerance, f"{name}: differs from one process by {gap}"


def assert_identical_ranks(results: list[dict]) -> None:
    first = results[0]
    for other in results[1:]:
        for part in ("adapters", "head"):
            for name, value in first[part].items():
                assert torch.equal(value, other[part][name]), \
                    f"rank {other['rank']} {part} {name} differs from rank 0"
        assert torch.equal(first["record"]["probs"], other["record"]["probs"])


# ---------------------------------------------------------------------- one process, no launcher


def test_slices_and_blocks_cover_everything_once():
    for size in (1, 2, 3):
        for count in (0, 1, 2, 5, 8):
            items = list(range(count))
            slices = [World(rank=r, size=size).slice_of(items) for r in range(size)]
            assert [x for part, _ in slices for x in part] == items
            assert sum(weight for _, weight in slices) == pytest.approx(1.0 if count else 0.0)
            assert max(len(p) for p, _ in slices) - min(len(p) for p, _ in slices) <= 1
            blocks = [World(rank=r, size=size).block_of(count) for r in range(size)]
            assert [i for block in blocks for i in block] == items


def test_one_process_world_changes_nothing():
    world = World()
    parameter = torch.nn.Parameter(torch.ones(3))
    parameter.grad = torch.full((3,), 2.0)
    world.sum_gradients([parameter])
    assert torch.equal(parameter.grad, torch.full((3,), 2.0))
    assert world.sum_values({"loss": 1.5}) == {"loss": 1.5}
    assert world.gather("x") == ["x"]
    assert world.slice_of([1, 2, 3]) == ([1, 2, 3], 1.0)


def test_the_world_follows_the_launcher(monkeypatch):
    for name in distributed.LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    distributed.set_world(None)
    try:
        assert not distributed.launched()
        assert distributed.world() == World()
    finally:
        distributed.set_world(None)


def test_mixed_precision_switch_sets_the_autocast_dtype():
    cpu = torch.device("cpu")
    with World(mixed_precision="bf16").autocast(cpu):
        assert torch.is_autocast_enabled("cpu") and \
            torch.get_autocast_dtype("cpu") == torch.bfloat16
    with World().autocast(cpu):  # no switch: float32 on the CPU
        assert not torch.is_autocast_enabled("cpu")


def test_bfloat16_is_refused_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(ConfigError, match=r"compute capability 7\.5.*no native bfloat16"):
        World(mixed_precision="bf16").autocast(torch.device("cuda"))


# ---------------------------------------------------------------------- 2-process jobs


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """polar_vbll on ``tiny``: 2 processes x 4 questions, 1 x 8, and 2 x 2 x 2 accumulated.

    33 training questions: the 5th step's global batch is the epoch's last, one question, so
    rank 1's slice is empty there (it must add zero gradients and still join the all-reduce).
    """
    folder = tmp_path_factory.mktemp("ddp_tiny")
    common = ["--model", "tiny", "--method", "polar_vbll", "--steps", "5", "--train", "33"]
    launch([str(WORKER), str(folder / "two"), *common, "--batch-size", "4"])
    launch([str(WORKER), str(folder / "one"), *common, "--batch-size", "8"], launcher="python")
    # accumulation: 32 questions, 4 steps (no short batch: micro-batches and the larger batch
    # would part at an epoch's end)
    common = ["--model", "tiny", "--method", "polar_vbll", "--steps", "4", "--train", "32"]
    launch([str(WORKER), str(folder / "one_32"), *common, "--batch-size", "8"],
           launcher="python")
    # the variable accelerate's Accelerator reads (accelerate launch's own
    # --gradient_accumulation_steps flag reaches it only in DeepSpeed runs)
    launch([str(WORKER), str(folder / "accumulated"), *common, "--batch-size", "2"],
           launcher="accelerate",
           environment={"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2"})
    return folder


def test_two_processes_follow_one_process_with_twice_the_batch(tiny_runs):
    two, one = ranks(tiny_runs / "two", 2), ranks(tiny_runs / "one", 1)[0]
    assert [r["world_size"] for r in two] == [2, 2] and one["world_size"] == 1
    assert_same_steps(two[0], one, tolerance=1e-5)
    assert one["losses"][0] != one["losses"][-1]  # it trained


def test_both_ranks_hold_identical_polar_factors_and_posterior(tiny_runs):
    two = ranks(tiny_runs / "two", 2)
    assert any(name.endswith(".X") for name in two[0]["adapters"])  # PoLAR's Stiefel factors
    assert_identical_ranks(two)


def test_accelerate_gradient_accumulation_switch_matches_the_larger_batch(tiny_runs):
    accumulated, one = ranks(tiny_runs / "accumulated", 2), ranks(tiny_runs / "one_32", 1)[0]
    assert_identical_ranks(accumulated)
    assert_same_steps(accumulated[0], one, tolerance=1e-5)


def test_sharded_evaluation_equals_one_process(tiny_runs):
    """The 2-process prediction of the trained model = one process predicting it again."""
    from polar_vbll import data

    two = ranks(tiny_runs / "two", 2)[0]
    method = Method.load(tiny_runs / "two" / "model", progress=False)
    test = data.load_task("arc_easy", "test", limit=len(two["record"]["labels"]))
    again = method.predict(test)
    sharded = metrics.summarize(two["record"]["probs"], two["record"]["labels"])
    single = metrics.summarize(again["probs"], again["labels"])
    assert torch.equal(again["labels"], two["record"]["labels"])
    assert sharded["accuracy"] == single["accuracy"]
    assert sharded["ece"] == pytest.approx(single["ece"], abs=1e-6)
    assert sharded["nll"] == pytest.approx(single["nll"], abs=1e-6)


def test_smollm2_smoke_fine_tune_on_two_processes(tmp_path):
    """The real model, smoke tier, under accelerate launch: same steps as one process, 2x batch."""
    common = ["--model", "smollm2-135m", "--method", "polar_vbll", "--steps", "3",
              "--train", "24", "--test", "16"]
    launch([str(WORKER), str(tmp_path / "two"), *common, "--batch-size", "2"],
           launcher="accelerate")
    launch([str(WORKER), str(tmp_path / "one"), *common, "--batch-size", "4"], launcher="python")
    two, one = ranks(tmp_path / "two", 2), ranks(tmp_path / "one", 1)[0]
    assert_identical_ranks(two)
    assert_same_steps(two[0], one, tolerance=1e-4)
    many = metrics.summarize(two[0]["record"]["probs"], two[0]["record"]["labels"])
    single = metrics.summarize(one["record"]["probs"], one["record"]["labels"])
    assert many["accuracy"] == single["accuracy"]
    assert many["nll"] == pytest.approx(single["nll"], abs=1e-4)


def test_cli_resumes_a_one_process_checkpoint_on_two_processes(tmp_path):
    """finetune under accelerate launch: resumes what one process saved, writes results once."""
    from polar_vbll import cli

    run = tmp_path / "run"
    common = ["finetune", "--task", "arc_easy", "--method", "polar_vbll", "--model", "tiny",
              "--profile", "smoke", "--no-progress", "--out", str(run)]
    assert cli.main(common + ["--set", "steps=2"]) == 0  # checkpoint at step 2 (log_every 2)
    output = launch(["-m", "polar_vbll.cli", *common, "--set", "steps=4", "--resume"],
                    launcher="accelerate")
    assert output.count("polar_vbll on arc_easy/test (2 processes)") == 1, output[-2000:]
    result = json.loads((run / "result.json").read_text())
    assert result["processes"] == 2
    assert [entry["step"] for entry in result["history"]] == [1, 2, 3, 4]


def test_cli_compare_runs_unchanged_under_torchrun(tmp_path):
    output = launch(["-m", "polar_vbll.cli", "compare", "--task", "arc_easy", "--methods",
                     "zero_shot,mle", "--model", "tiny", "--profile", "smoke", "--no-progress",
                     "--out", str(tmp_path / "cmp")])
    assert output.count("ACC and ECE in %") == 1, output[-2000:]  # one table, from rank 0
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert set(results["methods"]) == {"zero_shot", "mle"}
    assert results["methods"]["mle"]["metrics"]["arc_easy"]["n"] == 16
