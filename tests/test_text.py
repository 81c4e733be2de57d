"""Text conditioning: frozen open_clip towers, per-token embeddings + mask, fixed random init with
one warning, the disk cache, checkpoints, and the null caption. Offline (HF_HUB_OFFLINE=1)."""

import logging
import os

import open_clip
import pytest
import torch

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
