"""Backbones (FIT, 3D U-Net) and presets: shapes, zero-init identities, gradients, errors, paper sizes."""

from __future__ import annotations

import math

import pytest
import torch

from lit_snapvideo import paper
from lit_snapvideo.models.fit import FIT
from lit_snapvideo.models.presets import (
    PAPER_PRESETS,
    PRESETS,
    build_backbone,
    count_parameters,
    example_inputs,
    forward_flops,
)

TEXT_DIM = 24
TINY = ("fit_tiny", "unet_tiny", "dit_tiny")
TINY_CLIP = dict(frames=8, size=(16, 16))


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a busy 2-core machine, 2 OpenMP threads made these tiny steps up to 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(preset: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone(preset, text_dim=TEXT_DIM, overrides=overrides or None)


def inputs(batch=2, frames=8, size=(16, 16), seed=0):
    """Random inputs; sample 1 (and every odd one) is a still image with fps = inf."""
    return example_inputs(
        batch, frames, size, text_len=5, text_dim=TEXT_DIM, generator=torch.Generator().manual_seed(seed)
    )


def perturb_(model: torch.nn.Module, scale: float = 0.05) -> None:
    """Move every parameter off its init, so zero-initialised layers no longer block any path."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)


def latent_state(model: FIT, batch: int) -> torch.Tensor:
    return torch.randn(batch, model.num_latents, model.latent_dim)


@pytest.mark.parametrize("preset", TINY)
@pytest.mark.parametrize("frames,size", [(8, (16, 16)), (16, (16, 32))])
def test_forward_shapes_video_and_image_batch(preset, frames, size):
    model = tiny(preset)
    x, c_noise, cond = inputs(3, frames, size)
    assert torch.isinf(cond["fps"]).any() and torch.isfinite(cond["fps"]).any()
    out, state = model(x, c_noise, cond)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    if preset.startswith("fit"):
        assert state.shape == (3, model.num_latents, model.latent_dim)
    else:
        assert state is None


def test_fit_trains_natively_at_a_configured_input_size():
    model = tiny("fit_tiny", input_size=(16, 16, 32))
    assert model.pos_embed.shape[:3] == (16, 4, 8)
    x, c_noise, cond = inputs(2, 16, (16, 32))
    assert model(x, c_noise, cond)[0].shape == x.shape


@pytest.mark.parametrize("preset", TINY)
def test_output_is_zero_at_init(preset):
    """Zero-initialised output layers: F == 0, so the denoiser starts as D = c_skip * x_sigma."""
    model = tiny(preset)
    out, _ = model(*inputs())
    assert torch.equal(out, torch.zeros_like(out))


def test_fit_self_conditioning_none_equals_zeros():
    model = tiny("fit_tiny").eval()
    x, c_noise, cond = inputs()
    plain = model(x, c_noise, cond)
    zeros = model(x, c_noise, cond, self_cond=torch.zeros(2, model.num_latents, model.latent_dim))
    random = model(x, c_noise, cond, self_cond=latent_state(model, 2))
    for a, b, c in zip(plain, zeros, random):  # at init (gamma = 0) even random latents are a no-op
        assert torch.equal(a, b) and torch.equal(a, c)
    perturb_(model)  # trained weights: None still means zero previous latents, random latents now matter
    plain, zeros = (
        model(x, c_noise, cond)[0],
        model(x, c_noise, cond, torch.zeros(2, model.num_latents, model.latent_dim))[0],
    )
    torch.testing.assert_close(plain, zeros)
    assert not torch.allclose(plain, model(x, c_noise, cond, latent_state(model, 2))[0])


@pytest.mark.parametrize("preset", TINY)
def test_every_parameter_gets_a_finite_gradient(preset):
    model = tiny(preset).train()
    x, c_noise, cond = inputs()  # one video, one image: both the fps MLP and the inf-fps vector are used
    self_cond = latent_state(model, 2) if preset.startswith("fit") else None

    out, _ = model(x, c_noise, cond, self_cond)
    out.square().mean().add(out.mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    last = model.out_proj if hasattr(model, "out_proj") else model.out[-1]
    assert last.weight.grad.abs().sum() > 0  # F = 0 at init, yet the output layer learns at once

    model.zero_grad()
    perturb_(model)  # off the zero init, every parameter lies on a path to the output
    out, _ = model(x, c_noise, cond, self_cond)
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("preset", TINY)
def test_padded_text_tokens_are_ignored_and_conditioning_matters(preset):
    model = tiny(preset).eval()
    perturb_(model)
    x, c_noise, cond = inputs()
    cond["text_mask"][:, 3:] = False
    base = model(x, c_noise, cond)[0]
    padded = dict(cond, text=cond["text"].clone())
    padded["text"][:, 3:] = 100.0  # only padded positions change
    torch.testing.assert_close(model(x, c_noise, padded)[0], base)
    real = dict(cond, text=cond["text"].clone())
    real["text"][:, 0] += torch.linspace(-1, 1, TEXT_DIM)  # not a uniform shift: the text LayerNorm removes those
    assert not torch.allclose(model(x, c_noise, real)[0], base, atol=1e-4)
    video = dict(cond, fps=torch.full((2,), 8.0))  # sample 1 turns from a still image into a video
    assert not torch.allclose(model(x, c_noise, video)[0][1], base[1])
    assert not torch.allclose(model(x, c_noise + 0.5, cond)[0], base)


def test_unet_pooled_text_enters_the_resblock_embedding():
    """pooled_text adds the masked mean text token to the scale-shift vector; padded tokens stay ignored."""
    plain, pooled = tiny("unet_tiny").cond_embed, tiny("unet_tiny", pooled_text=True).cond_embed
    _, c_noise, cond = inputs()
    cond["text_mask"][:, 3:] = False
    other = dict(cond, text=cond["text"].clone())
    other["text"][:, 0] += torch.linspace(-1, 1, TEXT_DIM)  # not a uniform shift: the text LayerNorm removes those
    assert torch.equal(plain(c_noise, cond)[2], plain(c_noise, other)[2])  # off: text only via cross-attention
    tokens, _, vector = pooled(c_noise, cond)
    text = tokens[:, 3:6]  # the 3 real (projected) text tokens
    expected = tokens[:, 0] + tokens[:, 1] + tokens[:, 2] + pooled.pooled_text(text.mean(1))
    torch.testing.assert_close(vector, expected)
    padded = dict(cond, text=cond["text"].clone())
    padded["text"][:, 3:] = 100.0
    torch.testing.assert_close(pooled(c_noise, padded)[2], vector)
    assert not torch.allclose(pooled(c_noise, other)[2], vector)


@pytest.mark.parametrize("preset", TINY)
def test_gradient_checkpointing_matches_plain_backward(preset):
    plain, checkpointed = tiny(preset), tiny(preset)
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.grad_checkpointing = True
    perturb_(plain)
    perturb_(checkpointed)
    x, c_noise, cond = inputs()
    for model in (plain, checkpointed):
        model.train()
        model(x, c_noise, cond)[0].square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_fit_divisibility_errors_name_the_sizes():
    model = tiny("fit_tiny")
    _, c_noise, cond = inputs()
    with pytest.raises(ValueError, match=r"\(8, 18, 16\).*patch size \(1, 4, 4\)"):
        model(torch.zeros(2, 3, 8, 18, 16), c_noise, cond)
    with pytest.raises(ValueError, match=r"patch grid \(T,H,W\)=\(8, 5, 4\).*group size \(8, 2, 2\)"):
        model(torch.zeros(2, 3, 8, 20, 16), c_noise, cond)
    with pytest.raises(ValueError, match=r"80 latents.*6 groups"):
        model(torch.zeros(2, 3, 8, 24, 16), c_noise, cond)
    with pytest.raises(ValueError, match=r"\(12, 16, 16\)"):
        build_backbone("fit_tiny", TEXT_DIM, overrides={"input_size": (12, 16, 16)})


def test_unet_divisibility_error_names_the_sizes():
    model = tiny("unet_tiny")
    _, c_noise, cond = inputs()
    with pytest.raises(ValueError, match=r"\(H,W\)=\(15,16\).*divisible by 2"):
        model(torch.zeros(2, 3, 8, 15, 16), c_noise, cond)


def test_bad_cond_is_a_clear_error():
    model = tiny("fit_tiny")
    x, c_noise, cond = inputs()
    with pytest.raises(ValueError, match="fps"):
        model(x, c_noise, {k: v for k, v in cond.items() if k != "fps"})


def test_unknown_preset_and_override_name_the_valid_ones():
    with pytest.raises(ValueError, match="unknown backbone preset 'fit_huge'.*fit_500m.*unet_small"):
        build_backbone("fit_huge", TEXT_DIM)
    with pytest.raises(ValueError, match="latent_channels.*latent_dim"):
        build_backbone("fit_tiny", TEXT_DIM, overrides={"latent_channels": 8})


@pytest.mark.parametrize("preset", sorted(PAPER_PRESETS))
def test_paper_presets_match_their_names_on_meta(preset):
    params = count_parameters(preset, text_dim=1024)
    assert abs(params / PAPER_PRESETS[preset] - 1) < 0.10, f"{preset}: {params / 1e6:.1f}M"


def test_paper_hyperparameters_of_tables_7_and_8():
    table8 = paper.TABLE8["fit_3_9b"]
    fit = build_backbone("fit_3_9b", 1024, device="meta")
    assert (fit.patch_size, fit.group_size, fit.num_latents, fit.latent_dim) == tuple(
        table8[k] for k in ("patch_size", "group_size", "num_latents", "latent_dim")
    )
    assert len(fit.blocks) == table8["num_blocks"] and all(
        len(b.compute) == table8["global_layers"] for b in fit.blocks
    )
    assert fit.layout(16, 40, 64) == ((16, 10, 16), (1, 2, 4))  # 2,560 patches in 8 groups (Table 8)
    assert fit.blocks[0].compute[0].attn.heads == table8["latent_dim"] // table8["latent_head_dim"]
    table7 = paper.TABLE7["unet_284m"]
    unet = build_backbone("unet_284m", 1024, device="meta")
    assert unet.input_conv.out_channels == table7["base_channels"] * table7["channel_mult"][0]
    assert unet.levels == len(table7["channel_mult"])


def test_flops_per_video_from_module_equals_preset_and_scale_with_frames():
    model = tiny("fit_tiny")
    assert forward_flops(model, **TINY_CLIP) == forward_flops("fit_tiny", text_dim=TEXT_DIM, **TINY_CLIP)
    # the U-Net's per-frame work dominates: twice the frames, about twice the FLOPs
    double = forward_flops("unet_tiny", frames=16, size=(16, 16)) / forward_flops("unet_tiny", **TINY_CLIP)
    assert 1.9 < double < 2.1


def test_cpu_ablation_pair_has_matched_small_cost():
    """Sizing contract of presets.py: 1-2 forward GFLOPs per 16x40x64 video each, within 1.5x of each other."""
    fit, unet = (forward_flops(p, text_dim=256) / 1e9 for p in ("fit_small", "unet_small"))
    assert 1.0 <= fit <= 2.0 and 1.0 <= unet <= 2.0
    assert max(fit, unet) / min(fit, unet) < 1.5
    assert PRESETS["fit_small"]["group_size"] == (16, 5, 4)  # the paper's 8-group layout at 40x64


@pytest.mark.slow
@pytest.mark.parametrize("preset", TINY)
def test_tiny_backbone_overfits_one_clip(preset):
    """Denoising regression on one fixed clip: the loss falls at least 5x within 300 Adam steps."""
    torch.manual_seed(0)
    model = build_backbone(preset, TEXT_DIM).train()
    x, _, cond = inputs(1)
    clip = torch.nn.functional.avg_pool3d(torch.randn(1, 3, 8, 16, 16), 3, 1, 1).sign()  # fixed +-1 pattern
    gen = torch.Generator().manual_seed(0)
    eval_sigma = torch.tensor([0.2, 0.5, 1.0, 2.0])
    eval_noise = torch.randn(4, *clip.shape[1:], generator=gen)
    batch_cond = {k: v.expand(4, *v.shape[1:]) for k, v in cond.items()}

    def loss_at(sigma, noise):
        noisy = (clip + sigma.view(-1, 1, 1, 1, 1) * noise) / (1 + sigma**2).sqrt().view(-1, 1, 1, 1, 1)
        out, _ = model(noisy, sigma.log() / 4, batch_cond)
        return (out - clip).square().mean()

    with torch.no_grad():
        before = loss_at(eval_sigma, eval_noise).item()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(300):
        sigma = torch.exp(torch.randn(4, generator=gen) * 0.5 - 0.5)
        loss = loss_at(sigma, torch.randn(4, *clip.shape[1:], generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = loss_at(eval_sigma, eval_noise).item()
    assert math.isfinite(after) and after * 5 <= before, (before, after)


# ---- FIT's small-scale options (models/fit.py; each default is the paper's Table 8) ----------------------------

FIT_OPTIONS = {
    "local_layers": dict(local_layers=1, final_local_layers=1),
    "patch_conv": dict(patch_conv=True),
    "sincos": dict(pos_kind="sincos", pos_init_std=0.0),
    "pos_and_latent_std": dict(pos_init_std=1.0, latent_init_std=1.0),
    "read_first": dict(read_first=True),
    "cond_read_zero_init": dict(cond_read_zero_init=True),
    "sigma_modulation": dict(sigma_modulation=True),
    "pooled_text": dict(sigma_modulation=True, pooled_text=True),
    "cross_heads": dict(cross_heads=4),
    "patch_1x2x2": dict(patch_size=(1, 2, 2), group_size=(8, 4, 4)),
    "conv_stem": dict(conv_stem=4),
}


@pytest.mark.parametrize("name", sorted(FIT_OPTIONS))
def test_fit_option_shapes_and_gradients(name):
    model = tiny("fit_tiny", **FIT_OPTIONS[name])
    perturb_(model)
    x, c_noise, cond = inputs(2)
    out, state = model(x, c_noise, cond, self_cond=latent_state(model, 2))
    assert out.shape == x.shape and state.shape == (2, model.num_latents, model.latent_dim)
    out.pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: parameters without a gradient: {missing[:5]}"


@pytest.mark.parametrize("option", ["patch_conv", "sigma_modulation"])
def test_zero_initialised_fit_options_are_a_no_op_at_init(option):
    """The same seed builds the same shared weights; the option's zero-initialised part leaves the output unchanged."""
    plain, with_option = tiny("fit_tiny"), tiny("fit_tiny", **{option: True})
    shared = {k: v for k, v in plain.state_dict().items()}
    result = with_option.load_state_dict(shared, strict=False)
    assert not result.unexpected_keys
    assert all(("patch_conv" in k or "modulation" in k) for k in result.missing_keys), result.missing_keys
    with torch.no_grad():  # a non-zero output head, so the comparison is not trivially 0 == 0
        for m in (plain, with_option):
            m.out_proj.weight.copy_(torch.randn(m.out_proj.weight.shape, generator=torch.Generator().manual_seed(3)))
    x, c_noise, cond = inputs(2)
    state = latent_state(plain, 2)
    torch.testing.assert_close(with_option(x, c_noise, cond, state)[0], plain(x, c_noise, cond, state)[0])


def test_zero_initialised_cond_read_is_the_identity_at_init():
    """Before training, a zero-initialised cond-read passes the latents through: the caption cannot move F yet."""

    def outputs(model, text_shift):
        with torch.no_grad():
            model.out_proj.weight.copy_(
                torch.randn(model.out_proj.weight.shape, generator=torch.Generator().manual_seed(3))
            )
        x, c_noise, cond = inputs(2)
        cond["text"] = cond["text"] + text_shift * torch.randn(
            cond["text"].shape, generator=torch.Generator().manual_seed(4)
        )
        return model(x, c_noise, cond)[0]

    zero_init, plain = tiny("fit_tiny", cond_read_zero_init=True), tiny("fit_tiny")
    torch.testing.assert_close(outputs(zero_init, 0.0), outputs(zero_init, 1.0))
    assert not torch.allclose(outputs(plain, 0.0), outputs(plain, 1.0))


def test_fit_read_first_changes_the_block_order_only():
    """Same weights, other order: a different function, the same parameters."""
    plain, reordered = tiny("fit_tiny"), tiny("fit_tiny", read_first=True)
    reordered.load_state_dict(plain.state_dict())
    perturb_(plain)
    perturb_(reordered)
    x, c_noise, cond = inputs(2)
    assert not torch.allclose(plain(x, c_noise, cond)[1], reordered(x, c_noise, cond)[1])


def test_sincos_position_table_tells_every_patch_apart_at_unit_rms():
    from lit_snapvideo.models.layers import sincos_embedding_3d

    table = sincos_embedding_3d((8, 6, 10), 64)
    assert table.shape == (8, 6, 10, 64)
    assert table.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-5)  # the scale of LayerNormed content
    flat = table.reshape(-1, 64)
    distances = torch.cdist(flat, flat) + torch.eye(len(flat)) * 1e9
    assert distances.min() > 0.1  # no two grid cells share a code
    model = tiny("fit_tiny", pos_kind="sincos", pos_init_std=0.0)
    torch.testing.assert_close(model._positional_embedding((8, 4, 4)), sincos_embedding_3d((8, 4, 4), 32))


def test_fit_option_errors_name_the_setting():
    with pytest.raises(ValueError, match="pos_kind"):
        tiny("fit_tiny", pos_kind="rope")
    with pytest.raises(ValueError, match="cross_heads 5"):
        tiny("fit_tiny", cross_heads=5)
    with pytest.raises(ValueError, match="pooled_text.*sigma_modulation"):
        tiny("fit_tiny", pooled_text=True)


def test_paper_fit_presets_keep_table_8():
    """The options default off: the paper presets' parameter counts are the committed ones (models table)."""
    assert count_parameters("fit_500m") == 500_552_496
    assert count_parameters("fit_3_9b") == 4_013_010_992
    for preset in ("fit_500m", "fit_3_9b"):
        model = build_backbone(preset, 1024, device="meta")
        assert not model.final_local and model.modulation is None and model.pos_kind == "learned"
        assert all(not b.local and b.patch_conv is None and not b.read_first for b in model.blocks)


# ---- the DiT control (models/dit.py) ------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [dict(pos_kind="rope"), dict(conv_stem=4), dict(patch_size=(1, 2, 2))])
def test_dit_options_shapes_zero_init_and_gradients(options):
    model = tiny("dit_tiny", **options)
    x, c_noise, cond = inputs(2)
    out, state = model(x, c_noise, cond)
    assert out.shape == x.shape and state is None and torch.equal(out, torch.zeros_like(out))
    perturb_(model)
    model(x, c_noise, cond)[0].pow(2).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_dit_attends_over_the_whole_clip():
    """Every patch reads every other: changing the last frame's pixels changes the first frame's output."""
    model = tiny("dit_tiny").eval()
    perturb_(model)
    x, c_noise, cond = inputs(1)
    base = model(x, c_noise, cond)[0]
    moved = x.clone()
    moved[:, :, -1] += 1.0
    assert not torch.allclose(model(moved, c_noise, cond)[0][:, :, 0], base[:, :, 0], atol=1e-5)


def test_axial_rope_scores_depend_on_relative_positions_only():
    """<R(p) q, R(p') k> is a function of p - p': shifting both tokens along any axis keeps the score."""
    from lit_snapvideo.models.dit import apply_rope, axial_rope_angles

    grid, head_dim = (4, 5, 6), 16
    angles = axial_rope_angles(grid, head_dim)  # (120, 8)
    assert angles.shape == (math.prod(grid), head_dim // 2)
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    rotated_q = apply_rope(q.expand(1, 1, angles.shape[0], head_dim), angles)[0, 0]  # (N, d)
    rotated_k = apply_rope(k.expand(1, 1, angles.shape[0], head_dim), angles)[0, 0]

    def index(t, h, w):
        return (t * grid[1] + h) * grid[2] + w

    def score(a, b):
        return rotated_q[index(*a)] @ rotated_k[index(*b)]

    torch.testing.assert_close(score((0, 1, 2), (2, 3, 1)), score((1, 2, 4), (3, 4, 3)))
    assert not torch.allclose(score((0, 1, 2), (2, 3, 1)), score((0, 1, 2), (2, 3, 4)))
    assert torch.allclose(rotated_q.norm(dim=-1), q.norm().expand(angles.shape[0]))  # a rotation
