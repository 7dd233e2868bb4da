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
# # Results of the committed fine-tunes
#
# Every table and figure on this page is computed, when the book is built, from the fine-tunes
# committed in `polar_vbll/trained/` (`make checkpoints`): the course profile, seed 0, the same
# questions for every method. Nothing here is retrained or typed by hand; the code is
# `polar_vbll.results`, which also writes the README's headline table. The notebooks load the same
# runs, so their numbers are these.
#
# How to read them:
#
# - **ACC / ECE / NLL / Brier** on the task's first 500 test questions (notebook 00 defines them).
# - **ECE floor**: the ECE that a *perfectly calibrated* model with these confidences would still
#   show on 500 questions (labels drawn from the model's own probabilities). An ECE near the floor
#   is as calibrated as 500 questions can tell; differences between methods smaller than a few
#   points are within noise. One seed per method: accuracy differences of 1-2 points are too.
# - **AURC** and **ACC @ 80% cov**: answer the most confident questions first; AURC is the mean
#   error rate over every coverage (lower is better), ACC @ 80% the accuracy on the 80% most
#   confident questions (notebook 06).
# - **mean OOD AUROC**: how well 1 − max probability tells another set's questions from the
#   training task's test questions (0.5: not at all, 1: perfectly), averaged over the OOD sets.
# - **stable rank of ΔW**: ‖ΔW‖²_F / ‖ΔW‖²₂ averaged over the adapted matrices (notebook 01):
#   about 1 means the update collapsed to one direction. Post-hoc methods keep their base's adapters.
# - **fit s**: seconds to train on a 2-core CPU, the feature cache warm; a post-hoc method adds its
#   seconds to its base fine-tune's.
# - **passes / sequences per question** at prediction: backbone passes, and sequences through the
#   adapted layers (one per choice and pass).

# %% tags=["remove-input"]
from IPython.display import Markdown, display

from polar_vbll import results, viz

runs = results.committed_runs()
print(f"{len(runs)} committed runs")

# %% [markdown]
# ## In distribution: ARC-Easy
#
# Trained on ARC-Easy training questions, tested on ARC-Easy test questions.

# %% tags=["remove-input", "full-width"]
display(Markdown(results.method_table("arc_easy", runs)))

# %% [markdown]
# Accuracy against calibration error, one point per method. Up and to the left is better (more accurate, better calibrated);
# the grey band is the ECE noise floor of 500 questions (its 5th to 95th percentile over the
# methods' own floors).

# %% tags=["remove-input"]
rows = {task: results.method_rows(task, runs) for task in ("arc_easy", "obqa")}
viz.accuracy_vs_ece(rows).show()

# %% [markdown]
# The same checkpoints on the **whole** ARC-Easy test split (2376 questions; the 500 above and the
# 1876 after them, predicted by the loaded methods), as measured by
# `benchmarks/bench_calibration.py --committed --test-questions all` into
# `benchmarks/measured/calibration_cpu_course_arc_easy_2376.json`. With more questions the ECE
# noise floor drops to about 2%, so smaller differences are real.

# %% tags=["remove-input"]
import json
from pathlib import Path

import polar_vbll

measured = (Path(polar_vbll.__file__).resolve().parents[1] / "benchmarks" / "measured"
            / "calibration_cpu_course_arc_easy_2376.json")  # the repository's
row = json.loads(measured.read_text())["measurements"][0]
names = [name for name, value in row.items() if isinstance(value, dict) and "ece" in value]
display(Markdown(results.markdown(
    ["method", "questions", "ACC %", "ECE %", "ECE floor %", "NLL", "Brier"],
    [[name, str(row[name]["questions"]), f"{100 * row[name]['accuracy']:.1f}", f"{100 * row[name]['ece']:.1f}",
      f"{100 * row[name]['ece_noise_floor']['mean']:.1f}", f"{row[name]['nll']:.3f}", f"{row[name]['brier']:.3f}"]
     for name in names])))

# %% [markdown]
# ## Out of distribution: trained on OpenBookQA
#
# Trained on OpenBookQA, tested on its test questions and on 100 questions of each other set
# (ACC / ECE in %; with 100 questions, accuracy differences under about 10 points are noise).
# Every fine-tune here loses ARC-Easy accuracy against the zero-shot model; notebook 06 looks at
# why.

# %% tags=["remove-input", "full-width"]
display(Markdown(results.method_table("obqa", runs)))
display(Markdown(results.ood_table("obqa", runs)))

# %% [markdown]
# ## The headline table
#
# The README's table, written by `python -m polar_vbll.results --readme README.md` from these
# runs (`tests/test_results.py` fails when the README's numbers differ from them).

# %% tags=["remove-input"]
display(Markdown(results.headline_table(runs)))
