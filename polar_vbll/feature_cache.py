"""Train only the top K layers, and run the frozen lower layers once per token row.

On a CPU most of a fine-tuning step is spent in layers that do not change: with adapters only in
the top K of L decoder layers, the input of layer L - K is a fixed function of the tokens. So we
compute it once per row and keep it::

    tokens --(layers 0 .. L-K-1, frozen, once)--> h (T, d) --cache-->
    h --(layers L-K .. L-1 with adapters, every step)--> norm --> LM head / phi

:class:`TopLayers` runs the top part of a Hugging Face decoder (``inputs_embeds`` = the cached
states; rotary positions and the causal/padding mask are built by the model as usual).
:class:`FeatureCache` holds the lower part's output per token row, in memory and on disk: one
safetensors file per set of rows under ``POLAR_VBLL_CACHE/features``, named by a SHA-256 of
everything the states depend on (model name and size, a checksum of its weights, the split layer
and every token of every row), so a changed prompt, profile, model or split layer simply misses
and is recomputed; nothing stale is ever read. Every method of a ``compare`` reuses the file.

The rows of one question (its prompt followed by each choice) begin alike, so
:func:`lower_hidden_states` runs the shared beginning once per question and only each choice's own
tokens per row, against the shared part's keys and values (:func:`prefix_groups`); on ARC-Easy's
rows this is ~1.7x faster than running every row whole, with the same states up to float rounding.
The adapted top layers do the same on every step (:class:`TopLayers`): the prompt's states go
through them once per question, with gradients, and each choice's own tokens attend to its keys
and values (a cpu-profile training step ~1.4x faster at ``adapt_layers=2``, ~1.65x at 4;
``benchmarks/bench_shared_prompts.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from polar_vbll.errors import ConfigError

CACHE_VERSION = 2  # bump when the stored layout or how the states are computed changes


def decoder_layers(model) -> nn.ModuleList:
    decoder = model.get_decoder()
    if not isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        raise ConfigError(f"{type(model).__name__}: its decoder has no 'layers' ModuleList, so "
                          "adapt_layers (training only the top layers) is not available; use "
                          "adapt_layers=None")
    return decoder.layers


FINAL_NORMS = ("norm", "final_layer_norm", "final_layernorm", "ln_f")  # Llama/Qwen, GPT-NeoX, ...


@contextlib.contextmanager
def only_layers(model, start: int, stop: int, final_norm: bool = True):
    """Temporarily make the decoder run layers ``start .. stop-1`` only (and skip the final
    norm when ``final_norm`` is False). The layer modules are the model's own: adapters inside
    them train as usual. While they run, their attention modules count from 0 (``layer_idx``):
    a key/value cache made by this shortened decoder holds its layers at 0, 1, ..., where the
    model looks for the cache's length."""
    decoder = model.get_decoder()
    norm_name = next((name for name in FINAL_NORMS if hasattr(decoder, name)), None)
    if norm_name is None and not final_norm:
        raise ConfigError(f"{type(decoder).__name__} has no final norm named one of "
                          f"{FINAL_NORMS}; use adapt_layers=None (full depth)")
    layers, norm = decoder.layers, getattr(decoder, norm_name) if norm_name else None
    decoder.layers = nn.ModuleList(list(layers)[start:stop])
    numbered = [(module, module.layer_idx) for layer in decoder.layers
                for module in layer.modules() if isinstance(getattr(module, "layer_idx", None), int)]
    for module, index in numbered:
        module.layer_idx = index - start
    if not final_norm:
        setattr(decoder, norm_name, nn.Identity())
    try:
        yield decoder
    finally:
        decoder.layers = layers
        for module, index in numbered:
            module.layer_idx = index
        if norm_name:
            setattr(decoder, norm_name, norm)


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding


class TopLayers:
    """Callable: hidden states entering layer ``split`` (R, T, d) -> final normed states (R, T, d)."""

    def __init__(self, model, adapt_layers: int):
        total = len(decoder_layers(model))
        if not isinstance(adapt_layers, int) or not 1 <= adapt_layers <= total:
            raise ConfigError(f"adapt_layers must be an integer between 1 and {total} (the "
                              f"model's decoder layers), got {adapt_layers!r}")
        self.model, self.total, self.split = model, total, total - adapt_layers

    def layer_indices(self) -> range:
        """The indices of the trained layers, for ``add_adapters(layers=...)``."""
        return range(self.split, self.total)

    def __call__(self, inputs: dict, rows: list[list[int]], width: int) -> torch.Tensor:
        """Final normed states of ``rows`` (R, ``width``, d), left-padded like
        :func:`polar_vbll.choice.encode_choices` pads the rows, from ``inputs`` =
        :meth:`FeatureCache.shared_inputs` of the same rows: every group's shared beginning runs
        once, each row's own tokens against its keys and values (differentiable throughout)."""
        device, dtype = next(self.model.parameters()).device, self.model.dtype
        with only_layers(self.model, self.split, self.total) as decoder:
            shared, own = run_shared_prefixes(
                decoder, inputs["prefix"].to(device, dtype), inputs["prefix_mask"].to(device),
                inputs["tails"].to(device, dtype), inputs["tail_mask"].to(device),
                inputs["owner"].to(device), key="inputs_embeds")
        out = [None] * len(rows)
        for i, states in row_states(shared, own, inputs["groups"], rows):
            out[i] = nn.functional.pad(states, (0, 0, width - len(states), 0))
        return torch.stack(out)


MAX_GROUP_ROWS = 64  # rows per prefix group: each row holds a copy of its group's keys and values
MAX_CHUNK_ROWS = 256  # rows per chunk of groups run together while caching the lower layers


def prefix_groups(rows: list[list[int]], share: bool = True,
                  max_rows: int = MAX_GROUP_ROWS) -> list[tuple[int, list[int]]]:
    """Rows that begin with the same tokens, as ``[(p, [row indices])]``: every row of a group
    starts with the same ``p`` tokens (``p`` <= its length); a row on its own has ``p`` = its
    length. A question's choice rows share its prompt, so they form one group. With ``share``
    False every row is on its own (it runs whole).

    Sorted, rows with a common beginning are neighbours, and the beginning that a run of them
    shares is the shortest one that neighbours in it share. Walking the rows in order, a row joins
    the group before it when that runs fewer token positions in all (``p`` once, plus every row's
    own tokens) than running it on its own: so the rows of one question join, even when two of its
    choices start with the same word, while the next question, which shares only the template,
    starts a new group. Short questions can share most of their tokens with the template, and
    then many questions join one group (OpenBookQA's training rows formed groups of thousands): a
    group stops at ``max_rows`` rows.
    """
    if not share:
        return [(len(row), [i]) for i, row in enumerate(rows)]

    def common(a, b):
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        return n

    def positions(p, lengths):  # token positions a group runs: its beginning once, then the rest
        return p + sum(n - p for n in lengths)

    order = sorted(range(len(rows)), key=lambda i: rows[i])
    groups: list[tuple[int, list[int]]] = []
    for previous, i in zip([None] + order, order):
        if groups:
            p, members = groups[-1]
            q = min(p, common(rows[previous], rows[i]))
            lengths = [len(rows[m]) for m in members]
            if (q and len(members) < max_rows
                    and positions(q, lengths + [len(rows[i])]) < positions(p, lengths) + len(rows[i])):
                groups[-1] = (q, members + [i])
                continue
        groups.append((len(rows[i]), [i]))
    return groups


def _cache_argument(decoder) -> str | None:
    """The name under which this decoder takes a key/value cache (``cache`` or
    ``past_key_values``, depending on the transformers version)."""
    parameters = inspect.signature(decoder.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def pad_pieces(pieces: list[torch.Tensor], left: bool, value=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows (n_k,) or state rows (n_k, d) -> one tensor (K, N, ...) and a mask (K, N), padded
    on the left (every row ends in the last column) or on the right; ``N`` may be 0."""
    width = max(len(piece) for piece in pieces)
    out = pieces[0].new_full((len(pieces), width, *pieces[0].shape[1:]), value)
    mask = torch.zeros(len(pieces), width, dtype=torch.long)
    for k, piece in enumerate(pieces):
        if len(piece):
            where = slice(width - len(piece), width) if left else slice(0, len(piece))
            out[k, where], mask[k, where] = piece, 1
    return out, mask


def run_shared_prefixes(decoder, prefix, prefix_mask, tails, tail_mask, owner,
                        key: str = "input_ids") -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of :func:`prefix_groups` through ``decoder`` (token ids, or states with
    ``key="inputs_embeds"``): the groups' shared beginnings ``prefix`` (G, P[, d]) left-padded,
    keeping their keys and values; then every row's own tokens ``tails`` (R, W[, d]) right-padded, against
    a copy of its group's keys and values (``owner`` (R,): the group of each row) at positions that
    continue it. Returns the last hidden states (G, P, d) and (R, W, d). Causal attention makes
    this the same function of the tokens as running each row whole (up to float rounding)."""
    cache_name = _cache_argument(decoder)
    width = tails.shape[1]
    if width and cache_name is None:
        raise ConfigError(f"{type(decoder).__name__} takes no key/value cache, so rows cannot share "
                          "their beginning; run every row whole (ChoiceForm(share_prompts=False))")
    result = decoder(**{key: prefix}, attention_mask=prefix_mask,
                     position_ids=_position_ids(prefix_mask), use_cache=width > 0)
    shared = result.last_hidden_state
    if width == 0:
        return shared, shared.new_zeros(len(owner), 0, shared.shape[-1])
    kv = getattr(result, cache_name)
    kv.reorder_cache(owner)  # one copy of its group's keys and values per row
    positions = prefix_mask.sum(1)[owner, None] + torch.arange(width, device=prefix_mask.device)
    own = decoder(**{key: tails}, attention_mask=torch.cat([prefix_mask[owner], tail_mask], 1),
                  position_ids=positions, use_cache=True, **{cache_name: kv}).last_hidden_state
    return shared, own


def row_states(shared: torch.Tensor, own: torch.Tensor, groups, rows):
    """``(row index, its states (T_i, d))`` for each row of a chunk that
    :func:`run_shared_prefixes` ran: its group's beginning, then its own tokens."""
    r = 0
    for g, (p, members) in enumerate(groups):
        for i in members:
            yield i, torch.cat([shared[g, shared.shape[1] - p:], own[r, :len(rows[i]) - p]])
            r += 1


def group_tensors(groups, rows, prefix_of, tail_of, pad=0) -> dict:
    """The padded inputs of :func:`run_shared_prefixes` for ``groups`` of ``rows``:
    ``prefix_of(row, p)`` / ``tail_of(row, p)`` give a row's first ``p`` and remaining positions
    (its tokens, or its cached states)."""
    prefix, prefix_mask = pad_pieces([prefix_of(members[0], p) for p, members in groups], True, pad)
    tails, tail_mask = pad_pieces([tail_of(i, p) for p, members in groups for i in members], False,
                                  pad)
    owner = torch.tensor([g for g, (_, members) in enumerate(groups) for _ in members])
    return {"groups": groups, "prefix": prefix, "prefix_mask": prefix_mask, "tails": tails,
            "tail_mask": tail_mask, "owner": owner}


@torch.no_grad()
def lower_hidden_states(model, rows: list[list[int]], split: int, batch_size: int = 16,
                        pad_id: int = 0, progress: bool = False,
                        share_prefixes: bool = True) -> list[torch.Tensor]:
    """The input of layer ``split`` for each row, [(T_r, d) float32 on the CPU], in row order.

    With ``share_prefixes`` the tokens that rows share at their start (a question's prompt, before
    each of its choices) run once (:func:`prefix_groups`, :func:`run_shared_prefixes`): the shared
    part runs left-padded, ``batch_size`` groups at a time, and keeps its keys and values; each
    row's own tokens then run right-padded against a copy of them, at positions that continue the
    shared part. Causal attention makes this the same function of the tokens as running every row
    whole; the numbers differ only by float rounding (~1e-4 relative). Groups run sorted by
    length, so there is little padding, and a chunk holds at most :data:`MAX_CHUNK_ROWS` rows
    (one group at least), which bounds the memory of the keys and values it copies.
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    out: list[torch.Tensor | None] = [None] * len(rows)
    was_training = model.training
    model.eval()
    with only_layers(model, 0, split, final_norm=False) as decoder:
        groups = prefix_groups(rows, share_prefixes and _cache_argument(decoder) is not None)
        groups.sort(key=lambda group: group[0])
        tokens = [torch.tensor(row, dtype=torch.long) for row in rows]
        chunks, chunk_rows = [[]], 0
        for group in groups:
            if chunks[-1] and (len(chunks[-1]) == batch_size
                               or chunk_rows + len(group[1]) > MAX_CHUNK_ROWS):
                chunks.append([])
                chunk_rows = 0
            chunks[-1].append(group)
            chunk_rows += len(group[1])
        for chunk in tqdm(chunks, desc="caching lower layers", disable=not progress, leave=False):
            inputs = group_tensors(chunk, rows, lambda i, p: tokens[i][:p],
                                   lambda i, p: tokens[i][p:], pad_id)
            shared, own = run_shared_prefixes(
                decoder, *(inputs[name].to(device) for name in
                           ("prefix", "prefix_mask", "tails", "tail_mask", "owner")))
            for i, states in row_states(shared.float().cpu(), own.float().cpu(), chunk, rows):
                out[i] = states  # (T_i, d)
    model.train(was_training)
    return out


def model_fingerprint(model, model_name: str) -> str:
    """Name, size and a weight checksum: what the lower layers' output depends on besides tokens."""
    embedding = model.get_input_embeddings().weight
    first = next(decoder_layers(model)[0].parameters())
    checksum = float(embedding.double().sum()) + float(first.double().sum())
    config = model.config
    return (f"{model_name}|{type(model).__name__}|{config.hidden_size}|"
            f"{config.num_hidden_layers}|{embedding.dtype}|{checksum:.10e}")


class FeatureCache:
    """Lower-layer hidden states keyed by token row, in memory and on disk (see module doc)."""

    def __init__(self, model, split: int, model_name: str = "", batch_size: int = 16,
                 progress: bool = False, folder: str | Path | None = None):
        from polar_vbll.models import cache_dir

        self.model, self.split, self.batch_size, self.progress = model, split, batch_size, progress
        self.folder = Path(folder) if folder is not None else cache_dir() / "features"
        self.fingerprint = model_fingerprint(model, model_name)
        self.store: dict[tuple[int, ...], torch.Tensor] = {}
        self.computed_rows = 0  # rows run through the lower layers by this object (for tests)
        self.loaded_files: list[Path] = []

    def key(self, rows: list[list[int]]) -> str:
        digest = hashlib.sha256(f"v{CACHE_VERSION}|{self.fingerprint}|split={self.split}".encode())
        for row in rows:
            digest.update(len(row).to_bytes(4, "little"))
            digest.update(torch.tensor(row, dtype=torch.int64).numpy().tobytes())
        return digest.hexdigest()[:32]

    def path(self, rows: list[list[int]]) -> Path:
        return self.folder / f"{self.key(rows)}.safetensors"

    def _compute(self, rows: list[list[int]], progress: bool) -> None:
        missing = list({tuple(r): None for r in rows if tuple(r) not in self.store})
        if not missing:
            return
        pad = getattr(self.model.config, "pad_token_id", None) or 0
        states = lower_hidden_states(self.model, [list(r) for r in missing], self.split,
                                     self.batch_size, pad, progress)
        self.store.update(zip(missing, states))
        self.computed_rows += len(missing)

    def prepare(self, rows: list[list[int]], progress: bool | None = None) -> Path:
        """Load the states of ``rows`` from disk, or compute and save them; returns the file."""
        from safetensors.torch import load_file, save_file

        progress = self.progress if progress is None else progress
        path = self.path(rows)
        if all(tuple(r) in self.store for r in rows):
            return path
        if path.is_file():
            tensors = load_file(str(path))
            lengths = tensors["lengths"].tolist()
            tokens = tensors["tokens"].split(lengths)
            hidden = tensors["hidden"].split(lengths)
            for row_tokens, row_hidden in zip(tokens, hidden):
                self.store[tuple(row_tokens.tolist())] = row_hidden
            self.loaded_files.append(path)
            if all(tuple(r) in self.store for r in rows):
                return path
        self._compute(rows, progress)
        unique = list({tuple(r): None for r in rows})
        tensors = {"lengths": torch.tensor([len(r) for r in unique]),
                   "tokens": torch.tensor([t for r in unique for t in r], dtype=torch.int64),
                   "hidden": torch.cat([self.store[r] for r in unique]).contiguous()}
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        os.close(handle)
        save_file(tensors, temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)  # atomic: a reader never sees half a file
        return path

    def shared_inputs(self, rows: list[list[int]], share: bool = True) -> dict:
        """What :class:`TopLayers` runs for ``rows``: their :func:`prefix_groups` (with ``share``;
        otherwise every row on its own, whole) and the cached states of each group's shared
        beginning and of each row's own tokens (:func:`group_tensors`); rows never seen are
        computed now (kept in memory, not on disk)."""
        self._compute(rows, progress=False)
        states = [self.store[tuple(row)] for row in rows]
        return group_tensors(prefix_groups(rows, share), rows, lambda i, p: states[i][:p],
                             lambda i, p: states[i][p:])


__all__ = ["FeatureCache", "TopLayers", "decoder_layers", "group_tensors", "lower_hidden_states",
           "model_fingerprint", "only_layers", "pad_pieces", "prefix_groups", "row_states",
           "run_shared_prefixes"]
