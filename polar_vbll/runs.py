"""A run and its key, and the course's catalogue of runs.

A :class:`Run` names one fine-tune: a method, its options, the task it trains on, the OOD tasks it
is tested on, the model, the seed and the profile. Its **key** is a hash of that whole
configuration (:meth:`Run.config`), so a stored run is found by the configuration alone and a run
stored under another configuration is never mistaken for it (:mod:`polar_vbll.run_store`).

:func:`course_runs` lists every fine-tune the notebooks end with: what ``polar-vbll checkpoints``
trains at the :data:`COMMITTED_TIER` profile and commits with the package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from polar_vbll import models
from polar_vbll.profiles import Profile, get_profile
from polar_vbll.splits import OOD_PROTOCOL

COMMITTED_TIER = "course"  # the profile whose runs are committed
FORMAT_VERSION = 1  # bump when what a checkpoint holds, or how a run is trained, changes


@dataclass(frozen=True)
class Run:
    """One fine-tune: a method trained on ``task`` and evaluated on its test split (and ``ood``)."""

    method: str
    task: str
    profile: Profile
    seed: int = 0
    model: str = models.SMOLLM2
    options: dict = field(default_factory=dict)  # make_method options, e.g. stiefel_method
    ood: tuple = ()

    @property
    def set_options(self) -> dict:
        """The options that are set (None means the method's default), sorted by name."""
        return {k: v for k, v in sorted(self.options.items()) if v is not None}

    @classmethod
    def from_config(cls, config: dict, profile: Profile | None = None) -> "Run":
        """The run a recorded :meth:`config` describes (its own profile, or ``profile``)."""
        return cls(config["method"], config["task"], profile or Profile(**config["profile"]),
                   config["seed"], config["model"], config.get("options", {}),
                   tuple(config.get("ood", ())))

    @property
    def datasets(self) -> list[str]:
        return [self.task, *self.ood]

    def config(self) -> dict:
        """Everything the result depends on, as JSON: the key is a hash of it."""
        return {"format": FORMAT_VERSION, "method": self.method, "task": self.task,
                "ood": list(self.ood), "model": self.model, "seed": self.seed,
                "options": self.set_options,
                "profile": self.profile.to_dict()}

    @property
    def key(self) -> str:
        text = json.dumps(self.config(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        """A readable name: the method and its non-default options, e.g. 'polar (geoopt)'."""
        extra = ", ".join(str(v) for v in self.set_options.values())
        return f"{self.method} ({extra})" if extra else self.method

    @property
    def folder_name(self) -> str:
        options = "".join(f"-{v}" for v in self.set_options.values())
        return f"{self.method}{options}-{self.task}-{self.key}"

    def at(self, profile: Profile) -> "Run":
        return self.replace(profile=profile)

    def replace(self, **changes) -> "Run":
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- the course's runs

ARC, OBQA = "arc_easy", "obqa"
ARC_METHODS = ("mle", "map", "polar", "lora_vbll", "polar_vbll", "mc_dropout", "ensemble",
               "temperature", "laplace", "tfb", "blob")
OOD_METHODS = ("zero_shot", *ARC_METHODS)


def course_runs(profile: Profile | str = COMMITTED_TIER, seed: int = 0) -> list[Run]:
    """Every fine-tune the notebooks end with (what ``polar-vbll checkpoints`` trains).

    00, 01: mle. 02: mle, polar. 03: polar trained three ways. 04: lora_vbll. 05: zero_shot and
    the methods of ARC_METHODS on ARC-Easy; those of OOD_METHODS trained on OpenBookQA and
    tested out of distribution. Runs that two notebooks share (mle, polar) are one checkpoint.
    """
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    runs = [Run(name, ARC, profile, seed) for name in ("zero_shot", *ARC_METHODS)]
    runs += [Run("polar", ARC, profile, seed, options={"stiefel_method": how})
             for how in ("geoopt", "retraction")]
    runs += [Run(name, OBQA, profile, seed, ood=OOD_PROTOCOL) for name in OOD_METHODS]
    return runs
