"""Past one device: data parallelism through Hugging Face accelerate (or torchrun).

The same commands run on one process or on many::

    polar-vbll finetune --task arc_easy --method polar_vbll --out runs/pv        # one process
    accelerate launch --multi_gpu --num_processes 2 -m polar_vbll.cli finetune ...  # two
    accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 -m polar_vbll.cli ...
    torchrun --nproc_per_node 2 -m polar_vbll.cli finetune ...

``--multi_gpu`` is accelerate's multi-process launcher; on a machine without CUDA the same
command runs its processes on the CPU, joined over gloo (``--cpu`` would start one process only).

What changes with W processes, and why the result is the one-process result:

* **Training.** Every step draws one *global* batch of ``W x batch_size`` questions from the
  same seeded shuffle a single process uses (with ``batch_size`` it draws ``batch_size``); rank r
  takes the r-th slice. Each rank weights its mean loss by (its questions / the global batch's),
  backpropagates, and the gradients of the adapters and of the head are *summed* over ranks in
  one all-reduce: that is exactly the gradient of the global batch's mean loss. Clipping and the
  optimizer steps (AdamW; PoLAR's landing, retraction or geoopt steps on X, Y) then run on the
  same numbers on every rank, so the parameters stay identical without being broadcast
  (tests/test_distributed.py checks X, Y bit for bit). So W processes with batch b follow the
  loss curve of one process with batch W*b. PoLAR-VBLL's posterior steps use the same weighted
  all-reduce: they descend the ELBO of all ranks' features of the step, as one process holding
  the gathered features would. The ELBO's N is the number of training questions, not a shard's.
* **Evaluation.** The test questions are cut into the same eval batches as on one process; each
  rank runs the backbone on a contiguous block of whole batches, and the features are gathered
  in order, so every rank holds what one process would have computed (same padding, same
  numbers) and the heads, samples and metrics that follow are the one-process ones.
  MC-dropout is the exception: its masks follow the order of its passes, so every rank runs all
  of them (correct, not faster).
* **Once per job**: the frozen layers' feature cache is computed by the main process first (the
  others then read its file), checkpoints and JSON are written by the main process only, and only
  it prints results. A checkpoint holds the global state, so ``--resume`` works on any number of
  processes (the data order after resuming follows the new global batch size).
* **accelerate's switches**: ``accelerate launch --mixed_precision bf16|fp16`` selects the
  autocast dtype of the backbone pass (on any device; bf16 is refused on a GPU without native
  bfloat16; fp16 trains with a loss scaler; unset: :func:`polar_vbll.devices.policy`), and
  ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS=N`` (the variable accelerate's ``Accelerator`` reads;
  ``accelerate launch --gradient_accumulation_steps`` sets it only for DeepSpeed runs) sets the
  number of micro-batches per optimizer step, in place of the profile's ``grad_accumulation``.

Without a launcher (no ``WORLD_SIZE``/accelerate environment) nothing is imported from accelerate
and :func:`world` is a single process.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from polar_vbll.errors import ConfigError

LAUNCH_VARIABLES = ("WORLD_SIZE", "ACCELERATE_MIXED_PRECISION",
                    "ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class World:
    """The processes of one job: ``size`` of them, this one is ``rank`` (0 = main)."""

    rank: int = 0
    size: int = 1
    mixed_precision: str | None = None  # accelerate's switch; None = not set
    gradient_accumulation: int | None = None  # accelerate's switch; None = not set

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # ------------------------------------------------------------------ batches

    def slice_of(self, items: list) -> tuple[list, float]:
        """This rank's slice of a global batch and its weight (len(slice) / len(batch)).

        Slices differ in length by at most one; a rank may get an empty slice (weight 0) when a
        last, short batch has fewer questions than there are processes.
        """
        bounds = _even_bounds(len(items), self.size)
        start, stop = bounds[self.rank], bounds[self.rank + 1]
        return items[start:stop], (stop - start) / max(1, len(items))

    def block_of(self, count: int) -> range:
        """This rank's contiguous block of ``count`` work units (e.g. eval batches)."""
        bounds = _even_bounds(count, self.size)
        return range(bounds[self.rank], bounds[self.rank + 1])

    # ------------------------------------------------------------------ collectives

    def sum_gradients(self, parameters) -> None:
        """Sum the gradients of ``parameters`` over ranks, in place (one flat all-reduce).

        A parameter without a gradient on this rank (e.g. its slice was empty) contributes zeros;
        one without a gradient on *every* rank keeps ``grad = None``, as on one process (an
        optimizer skips it rather than stepping it with a zero gradient).
        """
        if not self.distributed:
            return
        parameters = [p for p in parameters if p.requires_grad]
        if not parameters:
            return
        present = torch.tensor([float(p.grad is not None) for p in parameters])
        torch.distributed.all_reduce(present)
        parameters = [p for p, count in zip(parameters, present.tolist()) if count > 0]
        if not parameters:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for parameter, grad in zip(parameters, grads):
            size = grad.numel()
            parameter.grad = flat[offset:offset + size].view_as(grad).to(grad.dtype)
            offset += size

    def sum_values(self, values: dict[str, float]) -> dict[str, float]:
        """Sum logged numbers over ranks (each rank sends its weighted share; every rank must
        pass the same names, zeros where it had nothing)."""
        if not self.distributed:
            return values
        names = sorted(values)
        flat = torch.tensor([float(values[n]) for n in names], dtype=torch.float64)
        torch.distributed.all_reduce(flat)
        return dict(zip(names, flat.tolist()))

    def gather(self, part):
        """Every rank's ``part`` (any picklable object), in rank order, on every rank."""
        if not self.distributed:
            return [part]
        parts = [None] * self.size
        torch.distributed.all_gather_object(parts, part)
        return parts

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """The main process runs the block first (e.g. writes a cache), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    # ------------------------------------------------------------------ precision

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The backbone pass's autocast format: accelerate's ``--mixed_precision`` when set, else
        what :func:`polar_vbll.devices.policy` chooses for the device (bfloat16 on GPUs with
        native bfloat16, none on older GPUs and on the CPU)."""
        from polar_vbll import devices

        device = torch.device(device)
        if self.mixed_precision in PRECISIONS:
            devices.check_autocast(PRECISIONS[self.mixed_precision], device)
            return PRECISIONS[self.mixed_precision]
        return None if self.mixed_precision == "no" else devices.policy(device).autocast

    def autocast(self, device: torch.device):
        """``torch.autocast`` in :meth:`autocast_dtype`, or nothing."""
        dtype = self.autocast_dtype(device)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=dtype)


def _even_bounds(count: int, parts: int) -> list[int]:
    """Boundaries of ``parts`` contiguous pieces of ``count`` items, sizes differing by <= 1."""
    base, extra = divmod(count, parts)
    bounds = [0]
    for index in range(parts):
        bounds.append(bounds[-1] + base + (1 if index < extra else 0))
    return bounds


_WORLD: World | None = None


def launched() -> bool:
    """Whether a launcher (accelerate launch, torchrun) started this process."""
    return any(os.environ.get(name) for name in LAUNCH_VARIABLES)


def world() -> World:
    """The job's processes, set up once (accelerate's state when launched, else one process)."""
    global _WORLD
    if _WORLD is None:
        _WORLD = _from_accelerate() if launched() else World()
    return _WORLD


def _from_accelerate() -> World:
    try:
        from accelerate import Accelerator
    except ImportError as error:  # pragma: no cover - accelerate is a dependency
        raise ConfigError(f"this process was launched for distributed training but accelerate "
                          f"cannot be imported ({error}); pip install accelerate") from None
    # cpu=True without CUDA: torchrun sets LOCAL_RANK, and accelerate only picks gloo (CPU)
    # when told the job is on the CPU
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    state = accelerator.state
    if state.num_processes > 1 and not torch.distributed.is_initialized():
        raise ConfigError(f"launched with {state.num_processes} processes but no process group "
                          "was initialised; start with `accelerate launch` or `torchrun`")
    steps = accelerator.gradient_accumulation_steps
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION")
    return World(rank=state.process_index, size=state.num_processes,
                 mixed_precision=str(accelerator.mixed_precision) if precision else None,
                 gradient_accumulation=steps if os.environ.get(
                     "ACCELERATE_GRADIENT_ACCUMULATION_STEPS") else None)


def set_world(value: World | None) -> None:
    """Replace the job's world (tests; ``None`` = detect again on the next :func:`world`)."""
    global _WORLD
    _WORLD = value


__all__ = ["World", "launched", "set_world", "world"]
