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

from polar_vbll import data
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
    them train as usual."""
    decoder = model.get_decoder()
    norm_name = next((name for name in FINAL_NORMS if hasattr(decoder, name)), None)
    if norm_name is None and not final_norm:
        raise ConfigError(f"{type(decoder).__name__} has no final norm named one of "
                          f"{FINAL_NORMS}; use adapt_layers=None (full depth)")
    layers, norm = decoder.layers, getattr(decoder, norm_name) if norm_name else None
    decoder.layers = nn.ModuleList(list(layers)[start:stop])
    if not final_norm:
        setattr(decoder, norm_name, nn.Identity())
    try:
        yield decoder
    finally:
        decoder.layers = layers
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

    def __call__(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with only_layers(self.model, self.split, self.total) as decoder:
            return decoder(inputs_embeds=hidden.to(self.model.dtype), attention_mask=attention_mask,
                           position_ids=_position_ids(attention_mask)).last_hidden_state


def prefix_groups(rows: list[list[int]]) -> list[tuple[int, list[int]]]:
    """Rows that begin with the same tokens, as ``[(p, [row indices])]``: every row of a group
    starts with the same ``p`` tokens (``p`` <= its length); a row on its own has ``p`` = its
    length. A question's choice rows share its prompt, so they form one group.

    Sorted, rows with a common beginning are neighbours, and the beginning that a run of them
    shares is the shortest one that neighbours in it share. Walking the rows in order, a row joins
    the group before it when that runs fewer token positions in all (``p`` once, plus every row's
    own tokens) than running it on its own: so the rows of one question join, even when two of its
    choices start with the same word, while the next question, which shares only the template,
    starts a new group.
    """
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
            if q and positions(q, lengths + [len(rows[i])]) < positions(p, lengths) + len(rows[i]):
                groups[-1] = (q, members + [i])
                continue
        groups.append((len(rows[i]), [i]))
    return groups


def _cache_argument(decoder) -> str | None:
    """The name under which this decoder takes a key/value cache (transformers renamed it)."""
    parameters = inspect.signature(decoder.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


@torch.no_grad()
def lower_hidden_states(model, rows: list[list[int]], split: int, batch_size: int = 16,
                        pad_id: int = 0, progress: bool = False,
                        share_prefixes: bool = True) -> list[torch.Tensor]:
    """The input of layer ``split`` for each row, [(T_r, d) float32 on the CPU], in row order.

    With ``share_prefixes`` the tokens that rows share at their start (a question's prompt, before
    each of its choices) run once (:func:`prefix_groups`): the shared part runs left-padded,
    ``batch_size`` groups at a time, and keeps its keys and values; each row's own tokens then run
    right-padded against a copy of them, at positions that continue the shared part. Causal
    attention makes this the same function of the tokens as running every row whole; the numbers
    differ only by float rounding (~1e-4 relative). Groups run sorted by length, so there is
    little padding.
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    out: list[torch.Tensor | None] = [None] * len(rows)
    was_training = model.training
    model.eval()
    with only_layers(model, 0, split, final_norm=False) as decoder:
        cache_name = _cache_argument(decoder) if share_prefixes else None
        groups = prefix_groups(rows) if cache_name else [(len(row), [i]) for i, row in enumerate(rows)]
        groups.sort(key=lambda group: group[0])
        for start in tqdm(range(0, len(groups), batch_size), desc="caching lower layers",
                          disable=not progress, leave=False):
            chunk = groups[start:start + batch_size]
            input_ids, mask = data.left_pad([rows[members[0]][:p] for p, members in chunk], pad_id)
            input_ids, mask = input_ids.to(device), mask.to(device)
            tails = [rows[i][p:] for p, members in chunk for i in members]  # each row's own tokens
            width = max(len(tail) for tail in tails)
            result = decoder(input_ids=input_ids, attention_mask=mask,
                             position_ids=_position_ids(mask), use_cache=width > 0)
            shared = result.last_hidden_state.float().cpu()  # (G, P, d), left-padded
            own = torch.zeros(len(tails), 0, shared.shape[-1])
            if width > 0:
                owner = torch.tensor([g for g, (_, members) in enumerate(chunk) for _ in members],
                                     device=device)
                kv = getattr(result, cache_name)
                kv.reorder_cache(owner)  # one copy of its group's keys and values per row
                tail_ids = torch.full((len(tails), width), pad_id, dtype=torch.long)
                tail_mask = torch.zeros(len(tails), width, dtype=mask.dtype)
                for r, tail in enumerate(tails):
                    tail_ids[r, :len(tail)] = torch.tensor(tail, dtype=torch.long)
                    tail_mask[r, :len(tail)] = 1
                tail_mask = tail_mask.to(device)
                positions = mask.sum(1)[owner, None] + torch.arange(width, device=device)
                own = decoder(input_ids=tail_ids.to(device),
                              attention_mask=torch.cat([mask[owner], tail_mask], 1),
                              position_ids=positions, use_cache=True,
                              **{cache_name: kv}).last_hidden_state.float().cpu()
            r = 0
            for g, (p, members) in enumerate(chunk):
                for i in members:
                    out[i] = torch.cat([shared[g, shared.shape[1] - p:],
                                        own[r, :len(rows[i]) - p]])  # (T_i, d)
                    r += 1
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

    def padded(self, rows: list[list[int]]) -> torch.Tensor:
        """Left-padded states of ``rows``, (R, T, d) float32 (zeros at padding); rows never seen
        are computed now (and kept in memory, not on disk)."""
        self._compute(rows, progress=False)
        states = [self.store[tuple(r)] for r in rows]
        width = max(s.shape[0] for s in states)
        out = torch.zeros(len(states), width, states[0].shape[1])
        for i, state in enumerate(states):
            out[i, width - state.shape[0]:] = state
        return out


__all__ = ["FeatureCache", "TopLayers", "decoder_layers", "lower_hidden_states",
           "model_fingerprint", "only_layers", "prefix_groups"]
