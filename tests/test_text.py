"""Text conditioning: frozen open_clip towers, per-token embeddings + mask, fixed random init with
one warning, the disk cache, checkpoints, and the null caption. Offline (HF_HUB_OFFLINE=1)."""

import logging
import os

import open_clip
import pytest
import torch

from conftest import PlantedPayload
from lit_snapvideo.models.text import NULL_CAPTION, TextEncoder

CAPTIONS = [
    "a small red circle moving left on a black background",
    "a large blue square moving up on a white background",
]


@pytest.fixture
def encoder(tmp_path):
    return TextEncoder("tiny", max_length=32, cache_dir=str(tmp_path / "cache"))


def test_runs_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_shapes_mask_and_frozen(encoder):
    emb, mask = encoder.encode(CAPTIONS + [NULL_CAPTION])
    assert emb.shape == (3, 32, encoder.dim) and emb.dtype == torch.float32 and encoder.dim == 256
    assert mask.dtype == torch.bool and mask.shape == (3, 32)
    words = [len(open_clip.tokenizer.SimpleTokenizer().encode(c)) for c in CAPTIONS]  # BPE ids, offline
    assert words == [10, 10]
    assert mask.sum(1).tolist() == [12, 12, 2]  # start + 10 words + end; the null caption is start + end
    assert (emb[~mask] == 0).all() and emb[mask].abs().sum(-1).gt(0).all()
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.tower.training


def test_random_init_is_fixed_and_distinguishes_captions(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lit_snapvideo.models.text"):
        a = TextEncoder("tiny", cache_dir=None)
    warnings = [r for r in caplog.records if "no text.checkpoint" in r.getMessage()]
    assert len(warnings) == 1
    torch.manual_seed(123)  # the caller's RNG state does not change the tower
    b = TextEncoder("tiny", cache_dir=None)
    assert a.weights_id == b.weights_id
    emb_a, mask = a.encode(CAPTIONS)
    emb_b, _ = b.encode(CAPTIONS)
    assert torch.equal(emb_a, emb_b)
    last_real = mask.sum(1) - 1  # the end token has seen the whole caption (causal attention)
    assert (emb_a[0, last_real[0]] - emb_a[1, last_real[1]]).abs().max() > 0.1


def test_second_encode_hits_the_cache(encoder, tmp_path):
    first, _ = encoder.encode(CAPTIONS)
    assert (encoder.cache_hits, encoder.cache_misses) == (0, 2)
    again, _ = encoder.encode([CAPTIONS[1], CAPTIONS[0]])
    assert (encoder.cache_hits, encoder.cache_misses) == (2, 2)
    assert torch.equal(again, first.flip(0))
    fresh = TextEncoder("tiny", max_length=32, cache_dir=str(tmp_path / "cache"))  # from disk, new process-like state
    from_disk, _ = fresh.encode(CAPTIONS)
    assert (fresh.cache_hits, fresh.cache_misses) == (2, 0) and torch.equal(from_disk, first)
    other = TextEncoder("tiny", max_length=8, cache_dir=str(tmp_path / "cache"))  # different key: recomputed
    other.encode(CAPTIONS)
    assert other.cache_misses == 2


def test_checkpoint_changes_weights_identity(tmp_path):
    source = TextEncoder("tiny", cache_dir=str(tmp_path / "cache"))
    state = {k: v + 0.01 for k, v in source.tower.state_dict().items()}
    clip_like = {"state_dict": {**state, "visual.proj": torch.zeros(1), "logit_scale": torch.zeros(())}}
    torch.save(clip_like, tmp_path / "text.pt")
    loaded = TextEncoder("tiny", checkpoint=str(tmp_path / "text.pt"), cache_dir=str(tmp_path / "cache"))
    assert loaded.weights_id != source.weights_id
    assert torch.equal(loaded.tower.token_embedding.weight, state["token_embedding.weight"])
    assert not torch.equal(loaded.encode(CAPTIONS[:1])[0], source.encode(CAPTIONS[:1])[0])
    torch.save({"bogus": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit the 'tiny' text tower"):
        TextEncoder("tiny", checkpoint=str(tmp_path / "bad.pt"))
    with pytest.raises(FileNotFoundError, match="text.checkpoint .*missing.pt not found"):
        TextEncoder("tiny", checkpoint=str(tmp_path / "missing.pt"))


def test_vit_b_32_text_tower_by_name(tmp_path):
    enc = TextEncoder("ViT-B-32", cache_dir=None)
    emb, mask = enc.encode(CAPTIONS[:1])
    assert enc.dim == 512 and emb.shape == (1, 32, 512)
    assert sum(p.numel() for p in enc.parameters()) > 30e6  # the real 12-layer, width-512 tower
    with pytest.raises(ValueError, match="unknown open_clip model 'nope'"):
        TextEncoder("nope")


# ---- a damaged cache entry is recomputed with one warning; a bad text.checkpoint is one error naming it ------------


def _plant(path, kind):
    good = torch.load(path, weights_only=True)
    if kind == "nan":
        good["emb"][0, 0] = float("nan")
        torch.save(good, path)
    elif kind == "structure":
        torch.save([good["emb"]], path)
    elif kind == "shape":
        torch.save({**good, "emb": good["emb"][:, :5]}, path)
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif kind == "payload":
        torch.save({"caption": good["caption"], "emb": PlantedPayload()}, path)


@pytest.mark.parametrize("kind", ["nan", "structure", "shape", "truncated", "payload"])
def test_a_bad_cache_entry_is_recomputed_with_one_warning(tmp_path, caplog, kind):
    """Before: a NaN entry gave black videos, and an entry of the wrong structure failed every later sample."""
    cache = str(tmp_path / "cache")
    first, _ = TextEncoder("tiny", max_length=16, cache_dir=cache).encode(CAPTIONS[:1])
    entry = next((tmp_path / "cache").rglob("*.pt"))
    _plant(entry, kind)
    fresh = TextEncoder("tiny", max_length=16, cache_dir=cache)
    with caplog.at_level(logging.WARNING):
        again, _ = fresh.encode(CAPTIONS[:1])
    assert torch.equal(again, first) and fresh.cache_misses == 1
    warned = [r.getMessage() for r in caplog.records if "text cache" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"text cache {entry}: "), warned
    assert warned[0].endswith("encoding the caption again")
    assert TextEncoder("tiny", max_length=16, cache_dir=cache).encode(CAPTIONS[:1])[0].equal(first)  # rewritten


def _bad_text_checkpoint(path, kind):
    state = TextEncoder("tiny", cache_dir=None).tower.state_dict()
    if kind == "nan":
        state["token_embedding.weight"][3, 0] = float("inf")
        torch.save(state, path)
    elif kind == "shape":
        torch.save({**state, "token_embedding.weight": torch.zeros(10, 4)}, path)
    elif kind == "foreign":
        torch.save([1, 2, 3], path)
    elif kind == "truncated":
        torch.save(state, path)
        path.write_bytes(path.read_bytes()[:1000])


BAD_TEXT_CHECKPOINTS = [
    ("nan", "1 tensor holds NaN or inf (token_embedding.weight)"),
    ("shape", "does not fit the 'tiny' text tower: 1 tensor(s) of another shape (token_embedding.weight (10, 4)"),
    ("foreign", "not a state dict of tensors"),
    ("truncated", "cannot be read as a torch state dict"),
]


@pytest.mark.parametrize("kind,fragment", BAD_TEXT_CHECKPOINTS, ids=[row[0] for row in BAD_TEXT_CHECKPOINTS])
def test_a_bad_text_checkpoint_is_one_error_naming_it(tmp_path, kind, fragment):
    from lit_snapvideo.errors import UserError, one_line

    path = tmp_path / f"{kind}.pt"
    _bad_text_checkpoint(path, kind)
    with pytest.raises(UserError) as caught:  # the CLI prints a UserError as one line, exit 2
        TextEncoder("tiny", checkpoint=str(path), cache_dir=None)
    line = one_line(caught.value)
    assert line.startswith(f"text.checkpoint {path}") and fragment in line, line
