"""Low-rank adapters on a frozen linear layer: LoRA and PoLAR.

A frozen layer ``y = W x + b`` (W: out x in) gets a trainable low-rank update Delta W:

* **LoRA** (Hu et al. 2021, as in peft): ``Delta W = s B A`` with ``A`` (r x in, Kaiming-uniform)
  and ``B`` (out x r, zeros), ``s = alpha / r``. In practice ``B A`` collapses to stable rank ~ 1.
* **PoLAR** (arXiv 2506.03133): ``Delta W = s X Theta Y^T`` with ``X`` (out x r) and ``Y``
  (in x r) with orthonormal columns (trained on the Stiefel manifold, see stiefel.py) and a
  free core ``Theta`` (r x r, or its diagonal), like a polar decomposition of Delta W.

Both start with ``Delta W = 0`` (B = 0, Theta = 0), so the adapted model equals the base model.
Adapter parameters are float32 even when the base weight is bfloat16: the adapter path runs in
float32 and its output is added back in the base dtype. Delta W is never formed in forward:
``x -> (x Y) Theta^T X^T`` costs O(r (in + out)) per token instead of O(in * out).

``add_adapters`` wraps the matching ``nn.Linear`` layers of a model in place; ``adapters_of``
finds them again; ``save_adapters`` / ``load_adapters`` store only the adapter tensors
(safetensors); ``rank_report`` and ``orthogonality_report`` measure rank collapse and drift.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn

from polar_vbll.errors import CheckpointError, ConfigError, ShapeError
from polar_vbll.linalg import orthogonality_error

ADAPTER_KINDS = ("lora", "polar")
THETA_KINDS = ("full", "diagonal")
DEFAULT_TARGETS = ("q_proj", "v_proj")
# The attention projections that carry the adapters, by architecture family, tried in order when
# a model has no q_proj / v_proj: Llama, Qwen, Mistral, SmolLM, Gemma, OPT (q_proj, v_proj);
# Phi-3 (qkv_proj); GPT-NeoX, Pythia, Falcon, BLOOM (query_key_value); MPT (Wqkv).
ATTENTION_TARGETS = (DEFAULT_TARGETS, ("qkv_proj",), ("query_key_value",), ("Wqkv",))


def linear_layer_names(model: nn.Module) -> list[str]:
    """The distinct last name components of the model's ``nn.Linear`` layers, sorted."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, nn.Linear)})


def resolve_target_modules(model: nn.Module, requested=DEFAULT_TARGETS) -> tuple[str, ...]:
    """The target modules to adapt in ``model``: ``requested`` when the model has them all;
    for the default (q_proj, v_proj), this architecture's attention projections
    (:data:`ATTENTION_TARGETS`); otherwise a ConfigError naming the missing names and the
    model's Linear layers."""
    requested = (requested,) if isinstance(requested, str) else tuple(requested)
    names = linear_layer_names(model)
    missing = [name for name in requested if name not in names]
    if not missing:
        return requested
    if requested == DEFAULT_TARGETS:
        for family in ATTENTION_TARGETS:
            if all(name in names for name in family):
                return family
    raise ConfigError(
        f"target_modules {missing} are not nn.Linear layers of {type(model).__name__}; its "
        f"Linear layers are named {names}. Choose some of them, e.g. "
        f"profile.with_overrides(target_modules=({names[0]!r},))" if names else
        f"{type(model).__name__} has no nn.Linear layer to adapt (e.g. GPT-2's Conv1D "
        "projections are not supported)")


def _check_rank_and_base(base: nn.Module, rank: int, alpha: float, dropout: float, layer_name: str) -> None:
    """Raise a project error unless base is nn.Linear, 0 < rank <= min(in, out), alpha > 0, 0 <= dropout < 1."""
    if not isinstance(base, nn.Linear):
        raise ConfigError(f"base of {layer_name} must be a torch.nn.Linear, got {type(base).__name__}")
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ConfigError(f"rank must be an int, got {rank!r}")
    shape = (base.out_features, base.in_features)
    if rank <= 0 or rank > min(shape):
        raise ShapeError(
            f"rank must satisfy 0 < rank <= min(out, in) = {min(shape)} for layer {layer_name} "
            f"with weight shape (out, in) = {shape}, got rank={rank}"
        )
    if not alpha > 0:
        raise ConfigError(f"alpha must be > 0, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")


def _orthonormal_columns(rows: int, columns: int, generator: torch.Generator | None) -> torch.Tensor:
    """Random (rows x columns) matrix with orthonormal columns: QR of a Gaussian, diag(R) > 0."""
    gaussian = torch.randn(rows, columns, generator=generator, dtype=torch.float64)
    Q, R = torch.linalg.qr(gaussian)
    signs = torch.sign(torch.diagonal(R))
    signs[signs == 0] = 1.0
    return (Q * signs).float()


class _AdapterBase(nn.Module):
    """Shared plumbing: frozen base, float32 adapter path, merge/unmerge."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        for parameter in self.base.parameters():
            parameter.requires_grad_(False)
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(p=dropout)
        self.merged = False
        self._weight_before_merge: torch.Tensor | None = None

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        """``x Delta W^T`` in float32 without forming Delta W; implemented by each adapter."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """Delta W (out, in), float32."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)  # (..., out), base dtype
        if self.merged:
            return result
        update = self.adapter_output(self.dropout(x.to(torch.float32)))  # (..., out), float32
        return result + update.to(result.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold Delta W into the base weight (for inference): forward becomes one matmul.

        The unmerged weight is kept, so ``unmerge`` restores it exactly in any dtype. While
        merged, the adapter parameters receive no gradient: merge after training.
        """
        if self.merged:
            raise ConfigError("merge(): this adapter is already merged; call unmerge() first")
        weight = self.base.weight
        self._weight_before_merge = weight.detach().clone()
        weight.copy_((weight.float() + self.delta_weight()).to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight saved by ``merge``."""
        if not self.merged:
            raise ConfigError("unmerge(): this adapter is not merged")
        self.base.weight.copy_(self._weight_before_merge)
        self._weight_before_merge = None
        self.merged = False


class LoRALinear(_AdapterBase):
    """``y = base(x) + s * (dropout(x) A^T) B^T``, ``s = alpha / rank`` (peft's LoRA).

    ``lora_A`` (rank, in): Kaiming-uniform with ``a = sqrt(5)`` (as peft and nn.Linear);
    ``lora_B`` (out, rank): zeros. Dropout acts on the adapter input only; MC-dropout sets
    ``module.dropout.p > 0`` and keeps the module in ``.train()`` mode at test time.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        _check_rank_and_base(base, rank, alpha, dropout, layer_name="base")
        super().__init__(base, rank, alpha, dropout)
        device = base.weight.device
        lora_A = torch.empty(rank, base.in_features, dtype=torch.float32)
        nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(lora_A.to(device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=torch.float32, device=device))

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaling * ((x @ self.lora_A.T) @ self.lora_B.T)  # (..., r) -> (..., out)

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * self.lora_B @ self.lora_A  # (out, in)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling}"


class PoLARLinear(_AdapterBase):
    """``y = base(x) + s * ((x Y) Theta^T) X^T``, i.e. ``Delta W = s X Theta Y^T``, ``s = alpha / rank``.

    ``X`` (out, rank) and ``Y`` (in, rank): orthonormal columns at init (QR of a Gaussian,
    sign-fixed so diag(R) > 0); train them with ``stiefel.make_stiefel_optimizer`` on
    ``stiefel_parameters()``. ``Theta``: (rank, rank) for ``theta="full"``, or the (rank,)
    diagonal for ``theta="diagonal"``; zeros at init; train it with any optimizer on
    ``euclidean_parameters()``. ``dropout`` (default 0) acts on the adapter input, as in LoRA.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        theta: str = "full",
        generator: torch.Generator | None = None,
        dropout: float = 0.0,
    ):
        _check_rank_and_base(base, rank, alpha, dropout, layer_name="base")
        if theta not in THETA_KINDS:
            raise ConfigError(f"theta must be one of {THETA_KINDS}, got {theta!r}")
        super().__init__(base, rank, alpha, dropout)
        device = base.weight.device
        self.theta_kind = theta
        self.X = nn.Parameter(_orthonormal_columns(base.out_features, rank, generator).to(device))
        self.Y = nn.Parameter(_orthonormal_columns(base.in_features, rank, generator).to(device))
        theta_shape = (rank, rank) if theta == "full" else (rank,)
        self.Theta = nn.Parameter(torch.zeros(theta_shape, dtype=torch.float32, device=device))

    def core(self) -> torch.Tensor:
        """Theta as an (r, r) matrix (a diagonal matrix for ``theta="diagonal"``)."""
        return self.Theta if self.theta_kind == "full" else torch.diag(self.Theta)

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        projected = x @ self.Y  # (..., r)
        if self.theta_kind == "full":
            projected = projected @ self.Theta.T  # (..., r)
        else:
            projected = projected * self.Theta  # (..., r)
        return self.scaling * (projected @ self.X.T)  # (..., out)

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * self.X @ self.core() @ self.Y.T  # (out, in)

    def stiefel_parameters(self) -> list[nn.Parameter]:
        """[X, Y]: the factors that live on Stiefel manifolds."""
        return [self.X, self.Y]

    def euclidean_parameters(self) -> list[nn.Parameter]:
        """[Theta]: the unconstrained core."""
        return [self.Theta]

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling}, theta={self.theta_kind!r}"


def _layer_index(name: str) -> str | None:
    """'model.layers.12.self_attn.q_proj' -> '12' (None when the name has no layers.<i>)."""
    parts = name.split(".")
    for before, after in zip(parts, parts[1:]):
        if before == "layers" and after.isdigit():
            return after
    return None


def adapters_of(model: nn.Module) -> dict[str, nn.Module]:
    """{qualified name: adapter} for every LoRALinear / PoLARLinear inside model."""
    return {name: module for name, module in model.named_modules() if isinstance(module, _AdapterBase)}


def add_adapters(
    model: nn.Module,
    kind: str = "lora",
    rank: int = 8,
    alpha: float = 16,
    target_modules: tuple[str, ...] | list[str] = ("q_proj", "v_proj"),
    dropout: float = 0.0,
    theta: str = "full",
    seed: int = 0,
    layers=None,
) -> dict[str, nn.Module]:
    """Wrap every ``nn.Linear`` whose last name component is in target_modules, in place.

    Freezes every parameter of the model (``requires_grad=False``) and then adds LoRA or PoLAR
    adapters (trainable) around the matching layers; the layers are initialised in
    ``model.named_modules()`` order from one ``torch.Generator`` seeded with ``seed``.
    ``layers`` (an iterable of decoder-layer indices, e.g. ``range(26, 30)``) restricts the
    adapters to modules inside ``...layers.<i>...`` for those i: how the course profile trains only
    the top layers (:mod:`polar_vbll.feature_cache`). Returns {qualified name of the wrapped
    layer: adapter}, the same dict ``adapters_of`` gives.
    """
    if kind not in ADAPTER_KINDS:
        raise ConfigError(f"kind must be one of {ADAPTER_KINDS}, got {kind!r}")
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    existing = adapters_of(model)
    if existing:
        raise ConfigError(
            f"add_adapters(): the model already has {len(existing)} adapters "
            f"(e.g. {next(iter(existing))}); adapters cannot be added twice"
        )
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    matches = [name for name in linear_names if name.rsplit(".", 1)[-1] in target_modules]
    if layers is not None:
        wanted = {str(int(i)) for i in layers}
        matches = [name for name in matches if _layer_index(name) in wanted]
    if not matches:
        raise ConfigError(
            f"target_modules={tuple(target_modules)} matched no nn.Linear layer"
            + (f" in layers {sorted(int(i) for i in wanted)}" if layers is not None else "")
            + f"; the model's Linear layers are named {linear_layer_names(model)}"
        )
    for name in matches:  # validate all layers before changing the model
        _check_rank_and_base(model.get_submodule(name), rank, alpha, dropout, layer_name=name)
    if kind == "polar" and theta not in THETA_KINDS:
        raise ConfigError(f"theta must be one of {THETA_KINDS}, got {theta!r}")

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    adapters = {}
    for name in matches:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child_name)
        if kind == "lora":
            adapter = LoRALinear(base, rank, alpha, dropout=dropout, generator=generator)
        else:
            adapter = PoLARLinear(base, rank, alpha, theta=theta, generator=generator, dropout=dropout)
        setattr(parent, child_name, adapter)
        adapters[name] = adapter
    return adapters


def reset_adapters(adapters: dict[str, nn.Module], seed: int) -> None:
    """Re-initialise adapters in place exactly as ``add_adapters(seed=seed)`` would (one generator
    seeded with ``seed``, the layers in the same order): how an ensemble starts each member."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in adapters.values():
            options = {"dropout": adapter.dropout.p}
            if isinstance(adapter, PoLARLinear):
                options["theta"] = adapter.theta_kind
            fresh = copy.deepcopy(adapter)
            fresh.__init__(adapter.base, adapter.rank, adapter.alpha, **options,
                           generator=generator)
            for name, parameter in adapter.named_parameters():
                if not name.startswith("base."):
                    parameter.copy_(dict(fresh.named_parameters())[name])


def adapter_state_dict(adapters: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """{"<layer name>.<parameter>": tensor} of the adapter parameters only (no base weights), on CPU.

    Copies, never views: the ensemble keeps one of these per member while training goes on in
    the same parameters (a view would make every member the last one).
    """
    state = {}
    for layer_name, adapter in adapters.items():
        for parameter_name, parameter in adapter.named_parameters():
            if parameter_name.startswith("base."):
                continue
            state[f"{layer_name}.{parameter_name}"] = parameter.detach().cpu().clone(
                memory_format=torch.contiguous_format)
    return state


def save_adapters(adapters: dict[str, nn.Module], path: str | Path) -> None:
    """Write the adapter parameters to one safetensors file (no pickle)."""
    from safetensors.torch import save_file

    save_file(adapter_state_dict(adapters), str(path))


def load_adapters(adapters: dict[str, nn.Module], path: str | Path) -> None:
    """Copy the tensors saved by ``save_adapters`` into adapters (same names, shapes).

    Raises CheckpointError for a missing file, missing or unexpected keys, or a key whose
    shape differs (naming the key and both shapes). Nothing is copied unless all match.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"adapter checkpoint {path} does not exist")
    load_adapter_state(adapters, load_file(str(path)), source=f"adapter checkpoint {path}")


def load_adapter_state(adapters: dict[str, nn.Module], state: dict[str, torch.Tensor],
                       source: str = "adapter state") -> None:
    """Copy ``state`` (as returned by :func:`adapter_state_dict`) into the adapters.

    Every key must match by name and shape (CheckpointError naming ``source`` otherwise);
    nothing is copied unless all do.
    """
    expected = adapter_state_dict(adapters)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the adapters: "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(tensor.shape)} in the file "
                f"but {tuple(expected[key].shape)} in the model"
            )
    with torch.no_grad():
        for layer_name, adapter in adapters.items():
            for parameter_name, parameter in adapter.named_parameters():
                key = f"{layer_name}.{parameter_name}"
                if key in state:
                    parameter.copy_(state[key])


def _core_of(adapter: nn.Module) -> torch.Tensor:
    """An r x r matrix with the same singular values as Delta W, from thin QR factors.

    LoRA: ``Delta W = s B A``; with ``B = Q_B R_B`` and ``A^T = Q_A R_A``,
    ``Delta W = Q_B (s R_B R_A^T) Q_A^T``, and Q_B, Q_A have orthonormal columns.
    PoLAR: likewise with ``X = Q_X R_X``, ``Y = Q_Y R_Y``: core ``s R_X Theta R_Y^T``. This is
    exact even when X and Y have drifted off the Stiefel manifold.
    """
    with torch.no_grad():
        if isinstance(adapter, LoRALinear):
            left, middle, right = adapter.lora_B, None, adapter.lora_A.T
        elif isinstance(adapter, PoLARLinear):
            left, middle, right = adapter.X, adapter.core(), adapter.Y
        else:
            raise ConfigError(f"expected a LoRALinear or PoLARLinear, got {type(adapter).__name__}")
        _, R_left = torch.linalg.qr(left.double())  # (r, r)
        _, R_right = torch.linalg.qr(right.double())  # (r, r)
        core = R_left if middle is None else R_left @ middle.double()
        return adapter.scaling * core @ R_right.T  # (r, r)


def rank_report(adapters: dict[str, nn.Module], top_k: int | None = None) -> dict[str, dict]:
    """{name: {"stable_rank": float, "singular_values": [s_1 >= s_2 >= ...]}} of each Delta W.

    Computed from an r x r core (see ``_core_of``), never from the dense out x in Delta W.
    ``top_k`` keeps only the largest top_k singular values in the list (stable rank uses all).
    Stable rank is 0 for Delta W = 0 (an untrained adapter).
    """
    report = {}
    for name, adapter in adapters.items():
        singular_values = torch.linalg.svdvals(_core_of(adapter))  # (r,), descending
        largest = singular_values[0].item()
        stable = 0.0 if largest == 0 else (singular_values**2).sum().item() / largest**2
        values = singular_values.tolist()
        report[name] = {"stable_rank": stable, "singular_values": values if top_k is None else values[:top_k]}
    return report


def orthogonality_report(adapters: dict[str, nn.Module]) -> dict[str, dict[str, float]]:
    """{name: {"X": ||X^T X - I||_F, "Y": ||Y^T Y - I||_F}} for the PoLAR adapters (others skipped)."""
    report = {}
    with torch.no_grad():
        for name, adapter in adapters.items():
            if isinstance(adapter, PoLARLinear):
                report[name] = {
                    "X": orthogonality_error(adapter.X.double()).item(),
                    "Y": orthogonality_error(adapter.Y.double()).item(),
                }
    return report
