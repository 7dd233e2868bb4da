# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # On a GPU, and past one device
#
# ## The Colab GPU walkthrough
#
# What is trained is a property of the *run*, not of the device: the notebooks use the `course`
# profile everywhere (adapters in the top 4 of SmolLM2's 30 layers over cached frozen layers,
# 1200 steps of 4 questions, 500 test questions). On a CPU a notebook loads its committed
# fine-tunes. On a GPU its **final fine-tune trains live** and everything else (notebook 05's
# comparison tables) is loaded; the printed line names the device, the seconds, and how far its
# ACC / ECE / NLL land from the committed run of the same configuration.
#
# | variable | effect |
# | --- | --- |
# | `POLAR_VBLL_LIVE` | unset: live on a GPU, loaded on a CPU; `1`: live anywhere; `0`: always loaded |
# | `POLAR_VBLL_RETRAIN=1` | train every fine-tune of the notebook, not only the final one |
# | `POLAR_VBLL_PROFILE` | `smoke` (a few steps), `course` (default), `full` (paper scale; CLI only) |
#
# A live run writes a checkpoint every `log_every` steps into `live_runs/<run>/`. After a Colab
# disconnect, running the cell again resumes from there; a folder that holds another
# configuration's run is refused with one line, and nothing is overwritten.
#
# **Precision by device** (`polar_vbll/devices.py`): float32 on a CPU; bfloat16 weights and autocast
# only on GPUs that support it natively (compute capability ≥ 8.0: A100, L4, H100); float32 on older
# GPUs such as Colab's T4 (7.5), where bfloat16 would be emulated. A 135M model's small matrices
# gain little from float16 casts there, and float32 needs no loss scaling; this choice is
# reasoned, not yet measured on a T4. float16 is possible: `accelerate launch --mixed_precision
# fp16` selects it, the trainer then scales the loss (a `GradScaler`), SmolLM2's largest
# activations stay inside float16's range (`tests/test_devices.py`), and a course fine-tune trained
# so on a CPU lands on its float32 run's ACC / ECE / NLL within float rounding
# (`benchmarks/learning_log.md`). Every training pass runs without PyTorch's cuDNN attention
# kernel, which returned NaN gradients for left-padded rows on the H200 this project was lent
# (`models.attention_kernels`).
#
# ## What the walkthrough costs, measured
#
# `benchmarks/bench_walkthrough.py` measures, per notebook, its live fine-tune (seconds, seconds per
# step, peak memory), the whole notebook with its final fine-tune trained live (as on a GPU with
# nothing set) or loaded (as on a CPU with nothing set), in a fresh cache folder (a new runtime),
# and the floating-point operations of the live fine-tune. The tables below are read from its
# JSON files in `benchmarks/measured/` when the book is built. First the README's table: each
# notebook with its fine-tunes loaded, as measured on 2 CPU cores, and a Colab T4 estimated (a
# bracket over the assumed efficiencies; how, below).

# %% tags=["remove-input"]
from pathlib import Path

from IPython.display import Markdown, display

import polar_vbll
from polar_vbll import measured, results

MEASURED = Path(polar_vbll.__file__).resolve().parents[1] / "benchmarks" / "measured"  # the repository's
assert MEASURED.is_dir(), f"{MEASURED} not found: build the book from a clone of the repository"
records = measured.walkthrough_records(MEASURED)
display(Markdown(measured.time_table(MEASURED)))

# %% [markdown]
# Every measurement in those files, per run of the benchmark (a live fine-tune: its method, seconds
# and steps; "-": not measured in that run):

# %% tags=["remove-input"]
rows = []
for record in records:
    for number, entry in record["measurements"]["notebooks"].items():
        live, whole, loaded = (entry.get(key, {}) for key in ("live", "notebook_run", "loaded_run"))
        rows.append([f"{measured.device_name(record)}, {record['measurements']['profile']}", number,
                     f"{live['method']} {live['seconds']:.0f} s ({live['steps']} steps)" if live else "-",
                     f"{live['peak_memory_bytes'] / 2**30:.2f} GiB" if live else "-",
                     f"{whole['seconds']:.0f} s" if whole else "-",
                     f"{loaded['seconds']:.0f} s" if loaded else "-",
                     f"{entry['live_flops'] / 1e12:.1f}" if "live_flops" in entry else "-"])
header = ["device, profile", "notebook", "live fine-tune", "peak memory", "notebook, live",
          "notebook, loaded", "TFLOP, live run"]
display(Markdown(results.markdown(header, rows)))

# %% [markdown]
# A live `course` fine-tune trains exactly the configuration that was committed, so on the same
# kind of device it should land on the committed run's numbers. How far each measured live run
# is from its committed run:

# %% tags=["remove-input"]
committed = {(r.run.method, r.run.task): r for r in results.committed_runs() if not r.run.options}
for record in records:
    if record["measurements"]["profile"] != "course":
        continue
    for number, entry in record["measurements"]["notebooks"].items():
        if "live" not in entry:
            continue
        live, task = entry["live"], entry["live"].get("task", "arc_easy")
        reference = committed[(live["method"], task)].metrics(task)
        gaps = {key: abs(live["metrics"][key] - reference[key]) for key in ("accuracy", "ece", "nll")}
        print(f"notebook {number}, {live['method']} on {record['machine']['device']}: |ACC - committed| "
              f"{gaps['accuracy']:.1e}, |ECE - committed| {gaps['ece']:.1e}, |NLL - committed| {gaps['nll']:.1e}")

# %% [markdown]
# **GPU rows are not measured yet**: the targets are at most 3 minutes a notebook on an H100
# or H200, and a live GPU fine-tune within 1.5 points of ACC, 2 of ECE and 0.03 of NLL of the
# committed CPU run (`tests/test_gpu.py` asserts it where a GPU is present).
#
# **How a T4 is estimated.** The live fine-tune's floating-point operations are counted on this
# machine by `torch.utils.flop_counter`: one training step's, and everything else the run computes
# (a one-step run from an empty feature cache: the frozen layers over every train, validation,
# test and OOD question, and the predictions). Arithmetic takes FLOPs / (peak × efficiency), with
# the T4's float32 peak (it has no native bfloat16, so the course runs float32 there) and an
# efficiency that is assumed, as a bracket, until a GPU run of the same benchmark measures one
# (`efficiency_measured`). But a step of the course profile is small: 4 questions through 4
# layers, a few thousand tensor operators, each launched from the host one after the other. So a
# step also takes at least its operators (counted here) times an assumed host time per launch,
# and the estimate charges each step the larger of the two. That floor is what keeps the
# optimistic end of the bracket honest. A whole notebook adds the loaded notebook's seconds
# measured on 2 CPU cores; the rest of a notebook loads committed runs and evaluates, which a GPU
# does faster. Colab's install and CUDA start-up are not in it.

# %% tags=["remove-input"]
for record in records:
    values = record["measurements"]
    if "efficiencies" in values:
        operators = sorted({e["operators_per_step"] for e in values["notebooks"].values()
                            if "operators_per_step" in e})
        print(f"{record['path']}: T4 peak {values['estimated_peak_flops'] / 1e12:.1f} TFLOP/s, "
              f"efficiencies {', '.join(f'{e:.0%}' for e in values['efficiencies'])}"
              + (f"; {operators[0]}-{operators[-1]} operators a step at "
                 f"{values['operator_seconds'] * 1e6:.0f} µs each" if operators else ""))

# %% [markdown]
# ## Past one device
#
# The same commands run data parallel under `accelerate launch` or `torchrun`, on GPUs or on CPU
# cores over gloo:
#
# ```bash
# accelerate launch --multi_gpu --num_processes 2 -m polar_vbll.cli finetune --task arc_easy \
#     --method polar_vbll --out runs/pv2          # 2 processes x 4 questions = 8 a step
# torchrun --nproc_per_node 2 -m polar_vbll.cli compare --task arc_easy --methods mle,polar_vbll
# ```
#
# Each step draws one global batch of processes × `batch_size` questions from the seeded shuffle
# one process would use; each process trains on its slice, and the gradients of adapters and head
# are summed before clipping and before every optimizer step. So PoLAR's X and Y take the same
# Stiefel step everywhere and stay bit-identical, and PoLAR-VBLL's posterior steps see every
# process's features; N in the ELBO stays the number of training questions. Evaluation shards whole
# batches and gathers them in order, so the metrics are those of one process; `--resume` continues
# a checkpoint on any number of processes. `tests/test_distributed.py` checks all of this with
# 2-process gloo jobs on the CPU (loss curves, identical parameters, sharded evaluation, gradient
# accumulation, the CLI under both launchers). `benchmarks/bench_ddp.py` measures what it costs
# where it cannot help: on 2 CPU cores, two 1-thread processes are slower than one 2-thread process.
#
# **Other models.** `--model` takes any causal LM from the hub or a local folder (Qwen, Llama,
# SmolLM, Phi-3, GPT-NeoX, ...). The adapters go on the attention projections the architecture has
# (`q_proj`/`v_proj`, `qkv_proj` or `query_key_value`; `--set target_modules=[...]` chooses others),
# and a model without them gets an error naming its own Linear layers. For a 1-8B model use the
# `full` profile (every layer adapted, whole splits) with bfloat16 on a recent GPU, start with a few
# dozen steps and watch memory; `polar_vbll.devices.check_memory` refuses a profile whose estimate
# does not fit. None of this has been measured beyond SmolLM2 here.
#
# ```bash
# accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 -m polar_vbll.cli compare \
#     --model meta-llama/Llama-3.1-8B-Instruct --task arc_easy --methods mle,polar_vbll,laplace \
#     --profile full --set batch_size=2 --out results/llama8b
# ```
