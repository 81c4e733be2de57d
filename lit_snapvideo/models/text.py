"""Frozen text conditioning: open_clip's tokenizer + an open_clip text tower, with a disk cache.

    enc = TextEncoder("tiny")                       # or "ViT-B-32" (its text tower), checkpoint=...
    emb, mask = enc.encode(["a red circle moving left on a black background", NULL_CAPTION])
    emb.shape, mask.shape                           # (2, 32, enc.dim), (2, 32); mask True = real token

Per-token embeddings are the tower's final (layer-normed) hidden states, before CLIP's pooling and
projection. Weights come from ``checkpoint`` (an open_clip CLIP state dict, or the text tower's
own); without one the tower is randomly initialised from a fixed seed, so every run and machine
gets the same frozen tower (one warning says so). open_clip's tokenizer ships its BPE vocabulary,
so nothing here touches the network (set HF_HUB_OFFLINE=1 anyway).

Classifier-free guidance: the null condition is the empty caption :data:`NULL_CAPTION` (``""``),
encoded like any other caption (start + end tokens). Label dropout replaces captions by it during
training, and the sampler encodes it for the unconditional branch.

The cache keeps one file per caption under ``cache_dir/<encoder>-<weights hash>-L<max_length>/``,
so each caption is encoded once per machine; ``cache_hits`` / ``cache_misses`` count lookups.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional, Sequence

import open_clip
import torch
from open_clip.model import CLIPTextCfg, _build_text_tower
from torch import nn

from ..safe_load import (
    CheckpointError,
    load_checkpoint_file,
    read_cache_entry,
    require_finite,
    save_atomic,
    unreadable_reason,
)

log = logging.getLogger(__name__)

NULL_CAPTION = ""  # the classifier-free-guidance null condition
TINY_TEXT_CFG = dict(context_length=77, vocab_size=49408, width=256, heads=4, layers=4)  # a CPU-sized tower
INIT_SEED = 0  # random-init towers are identical everywhere


def _tower_config(name: str) -> tuple[dict, int, bool]:
    """(text_cfg, embed_dim, quick_gelu) of ``tiny`` or an open_clip model name."""
    if name == "tiny":
        return dict(TINY_TEXT_CFG), TINY_TEXT_CFG["width"], False
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None or "text_cfg" not in model_cfg:
        raise ValueError(
            f"text.encoder: unknown open_clip model {name!r} (expected 'tiny' or a name from open_clip.list_models(), e.g. 'ViT-B-32')"
        )
    text_cfg = dict(model_cfg["text_cfg"])
    if text_cfg.get("hf_model_name"):
        raise ValueError(
            f"text.encoder: {name!r} uses a Hugging Face text tower; only open_clip's own TextTransformer towers are supported"
        )
    return text_cfg, model_cfg["embed_dim"], bool(model_cfg.get("quick_gelu", False))


def tower_width(name: str) -> int:
    """The embedding width of text encoder ``name`` (256 for tiny, 512 for ViT-B-32), without building it."""
    return int(_tower_config(name)[0]["width"])


def _text_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The text-tower keys of an open_clip checkpoint (whole CLIP, CustomTextCLIP or tower only); CheckpointError
    naming the file for one that is unsafe, unreadable, not a state dict or holds NaN / inf."""
    try:
        state = load_checkpoint_file(path, "cpu", hint="text.checkpoint takes an open_clip state dict")
    except CheckpointError:
        raise
    except Exception as err:  # truncated or not a torch file: torch's message is many lines and names no file
        reason = unreadable_reason(err)
        raise CheckpointError(f"text.checkpoint {path}: cannot be read as a torch state dict ({reason})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"text.checkpoint {path}: not a state dict of tensors (an open_clip checkpoint)")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("text.") for k in state):  # CustomTextCLIP keeps the tower under .text
        state = {k.removeprefix("text."): v for k, v in state.items() if k.startswith("text.")}
    else:
        skip = ("visual.", "logit_scale", "logit_bias", "attn_mask")
        state = {k: v for k, v in state.items() if not k.startswith(skip)}
    require_finite(state, path, "text.checkpoint")
    return state


class TextEncoder(nn.Module):
    """A frozen open_clip text tower. ``encode(captions) -> (emb float32 (B, L, dim), mask bool
    (B, L))`` with L = ``max_length``; ``dim`` is the tower width (256 for tiny, 512 for ViT-B-32)."""

    def __init__(
        self,
        name: str = "tiny",
        checkpoint: Optional[str] = None,
        max_length: int = 32,
        cache_dir: Optional[str] = ".cache/text_embeddings",
    ):
        super().__init__()
        text_cfg, embed_dim, quick_gelu = _tower_config(name)
        text_cfg["output_tokens"] = True
        with torch.random.fork_rng(devices=[]):  # a fixed init without disturbing the caller's RNG
            torch.manual_seed(INIT_SEED)
            self.tower = _build_text_tower(embed_dim, CLIPTextCfg(**text_cfg), quick_gelu=quick_gelu)
        self.checkpoint = checkpoint
        if checkpoint:
            self._load(Path(checkpoint), name)
        else:
            log.warning(
                "text encoder %r: no text.checkpoint given, using a randomly initialised frozen tower (seed %d); "
                "captions stay distinguishable but carry no language prior",
                name,
                INIT_SEED,
            )
        self.tower.requires_grad_(False).eval()
        self.tokenizer = open_clip.get_tokenizer(name) if name != "tiny" else open_clip.tokenizer.SimpleTokenizer()
        self.name, self.max_length, self.dim = name, int(max_length), int(text_cfg["width"])
        if not 1 <= self.max_length <= text_cfg.get("context_length", 77):
            raise ValueError(f"text.max_length must be in [1, {text_cfg.get('context_length', 77)}], got {max_length}")
        self.weights_id = self._weights_hash()
        self.cache_dir = (
            Path(cache_dir) / f"{name.replace('/', '_')}-{self.weights_id}-L{self.max_length}" if cache_dir else None
        )
        self._memory: dict[str, torch.Tensor] = {}
        self.cache_hits = self.cache_misses = 0

    def _load(self, path: Path, name: str) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"text.checkpoint {path} not found")
        state = _text_state_dict(path)
        target = self.tower.state_dict()
        wrong = [k for k, v in state.items() if k in target and v.shape != target[k].shape]
        if wrong:  # load_state_dict would raise a many-line RuntimeError
            raise CheckpointError(
                f"text.checkpoint {path} does not fit the {name!r} text tower: {len(wrong)} tensor(s) of another "
                f"shape ({', '.join(f'{k} {tuple(state[k].shape)} != {tuple(target[k].shape)}' for k in wrong[:3])})"
            )
        missing, unexpected = self.tower.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"text.checkpoint {path} does not fit the {name!r} text tower: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            )
        log.info("text encoder %r: weights from %s", name, path)

    def _weights_hash(self) -> str:
        h = hashlib.sha1()
        for key, value in sorted(self.tower.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().float().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def train(self, mode: bool = True) -> "TextEncoder":
        return super().train(False)  # frozen: always in eval mode

    @property
    def device(self) -> torch.device:
        return self.tower.token_embedding.weight.device

    @torch.no_grad()
    def _run_tower(self, captions: Sequence[str]) -> list[torch.Tensor]:
        """Real-token embeddings per caption, each (n_real, dim) float32 on the CPU."""
        # the tower's causal mask is built for its full context (77): run it whole, keep max_length
        # tokens (causal attention makes those independent of the ones cut off)
        ids = self.tokenizer(list(captions)).to(self.device)  # (B, 77), 0 = pad
        _, tokens = self.tower(ids)  # (B, 77, dim)
        if not bool(tokens.isfinite().all()):  # NaN conditioning samples black videos with exit 0
            source = f"text.checkpoint {self.checkpoint}" if self.checkpoint else "the randomly initialised tower"
            raise CheckpointError(f"text encoder {self.name!r}: {source} gives NaN or inf embeddings")
        lengths = (ids != 0).sum(1).clamp(max=self.max_length).tolist()
        return [tokens[i, :n].float().cpu() for i, n in enumerate(lengths)]

    def _file(self, caption: str) -> Path:
        return self.cache_dir / (hashlib.sha1(caption.encode()).hexdigest() + ".pt")

    def _entry_problem(self, entry: object, caption: str) -> Optional[str]:
        """Why a loaded cache entry cannot be used (None: it can): it must be this caption's (n, dim) float32
        embedding, 1 <= n <= max_length, every value finite."""
        if not isinstance(entry, dict) or not isinstance(entry.get("emb"), torch.Tensor):
            return "not a {caption, emb} entry"
        if entry.get("caption") != caption:  # a hash collision, or a file copied under another name
            return "holds another caption"
        emb = entry["emb"]
        fits = emb.ndim == 2 and emb.shape[1] == self.dim and 0 < len(emb) <= self.max_length
        if emb.dtype != torch.float32 or not fits:
            expected = f"(n <= {self.max_length}, {self.dim}) float32"
            return f"an embedding of shape {tuple(emb.shape)} {emb.dtype}, expected {expected}"
        if not bool(emb.isfinite().all()):
            return "NaN or inf in the embedding"
        return None

    def _lookup(self, caption: str) -> Optional[torch.Tensor]:
        if caption in self._memory:
            return self._memory[caption]
        if self.cache_dir is None:
            return None
        entry = read_cache_entry(
            self._file(caption),
            lambda entry: self._entry_problem(entry, caption),
            "text cache",
            "encoding the caption again",
        )
        if entry is None:
            return None
        self._memory[caption] = entry["emb"]
        return entry["emb"]

    def _store(self, caption: str, emb: torch.Tensor) -> None:
        self._memory[caption] = emb
        if self.cache_dir is not None:
            save_atomic({"caption": caption, "emb": emb}, self._file(caption))

    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """captions (B strings) -> (emb float32 (B, max_length, dim), mask bool (B, max_length)),
        on this module's device; padded positions hold zeros and mask False."""
        captions = [str(c) for c in captions]
        found = {c: self._lookup(c) for c in dict.fromkeys(captions)}
        todo = [c for c, emb in found.items() if emb is None]
        self.cache_hits += len(captions) - sum(captions.count(c) for c in todo)
        self.cache_misses += sum(captions.count(c) for c in todo)
        if todo:
            for caption, emb in zip(todo, self._run_tower(todo)):
                self._store(caption, emb)
                found[caption] = emb
        emb = torch.zeros(len(captions), self.max_length, self.dim)
        mask = torch.zeros(len(captions), self.max_length, dtype=torch.bool)
        for i, caption in enumerate(captions):
            n = found[caption].shape[0]
            emb[i, :n], mask[i, :n] = found[caption], True
        return emb.to(self.device), mask.to(self.device)
