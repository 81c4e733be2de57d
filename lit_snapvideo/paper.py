"""The Snap Video paper's published numbers (Menapace et al., CVPR 2024), in one place.

Copied from the paper, never measured here: ``report`` and ``bench`` print them beside our measurements,
``models.presets`` builds the paper's backbones from them, ``models.registry`` takes the optimisers, and the tests
check against them.

    TABLE2          quality and speed of the four backbones (A100; ms / video / GPU; 64x36, first stage)
    TABLE3          the diffusion-framework ablation (FIT 500M), keyed by our experiment names
    TABLE7, TABLE8  the U-Net and FIT sizes as constructor arguments of models/unet3d.py and models/fit.py (the
                    upsampler column: models/upsampler.py)
    TABLE9          the optimiser of each backbone kind
"""

from __future__ import annotations

T5_TEXT_DIM = 1024  # T5-11B d_model: the width of the text embeddings every paper backbone reads (§3.2)

# Table 2 (A100, ms / video / GPU; 64x36, first stage). Quality on the paper's internal data set.
TABLE2 = [
    {
        "model": "U-Net 85M",
        "preset": "unet_85m",
        "params": 85e6,
        "fid": 8.21,
        "fvd": 45.94,
        "clipsim": 0.2319,
        "train_ms": 133.2,
        "infer_ms": 49.6,
    },
    {
        "model": "U-Net 284M",
        "preset": "unet_284m",
        "params": 284e6,
        "fid": 4.90,
        "fvd": 23.76,
        "clipsim": 0.2391,
        "train_ms": 230.3,
        "infer_ms": 105.1,
    },
    {
        "model": "Snap Video FIT 500M",
        "preset": "fit_500m",
        "params": 500e6,
        "fid": 3.07,
        "fvd": 27.79,
        "clipsim": 0.2459,
        "train_ms": 69.5,
        "infer_ms": 23.4,
    },
    {
        "model": "Snap Video FIT 3.9B",
        "preset": "fit_3_9b",
        "params": 3.9e9,
        "fid": 2.51,
        "fvd": 12.31,
        "clipsim": 0.2579,
        "train_ms": 526.0,
        "infer_ms": 130.4,
    },
]


def table2(preset: str) -> dict:
    """The Table 2 row of a paper preset (KeyError for the others)."""
    rows = {row["preset"]: row for row in TABLE2}
    return rows[preset]


def speedup(column: str, fit: str = "fit_500m", unet: str = "unet_284m") -> float:
    """How many times faster FIT is than the U-Net in a Table 2 time column ("train_ms" or "infer_ms")."""
    return table2(unet)[column] / table2(fit)[column]


# Table 3 (FIT 500M, internal data set, 64x36): the diffusion-framework ablation. Keyed by our experiment names.
TABLE3 = {
    "sigma_edm_original": {
        "row": "(i) original EDM",
        "sigma_data": 0.5,
        "sigma_in": "1.0",
        "fid": 6.58,
        "fvd": 39.95,
        "clipsim": 0.2370,
    },
    "sigma_sigma_data_0_5": {
        "row": "(ii) scaled, EDM sigma_data",
        "sigma_data": 0.5,
        "sigma_in": "4.0",
        "fid": 4.03,
        "fvd": 31.00,
        "clipsim": 0.2449,
    },
    "sigma_sigma_in_2": {
        "row": "(iii) reduced sigma_in",
        "sigma_data": 1.0,
        "sigma_in": "2.0",
        "fid": 4.45,
        "fvd": 34.89,
        "clipsim": 0.2428,
    },
    "sigma_images_not_videos": {
        "row": "(iv) images not as inf-fps videos",
        "sigma_data": 1.0,
        "sigma_in": "1 / 4.0",
        "fid": 3.50,
        "fvd": 24.88,
        "clipsim": 0.2469,
    },
    "sigma_ours": {"row": "Ours", "sigma_data": 1.0, "sigma_in": "4.0", "fid": 3.07, "fvd": 27.79, "clipsim": 0.2459},
}

# Table 7: ADM U-Nets with interleaved temporal attention (models/unet3d.py arguments)
TABLE7 = {
    "unet_85m": dict(
        base_channels=128,
        channel_mult=(1, 2, 2, 3),
        num_res_blocks=2,
        attention_resolutions=(32, 16, 8),
        head_channels=64,
        cond_dim=768,
        dropout=0.1,
    ),
    "unet_284m": dict(
        base_channels=192,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks=2,
        attention_resolutions=(32, 16, 8),
        head_channels=64,
        cond_dim=768,
        dropout=0.1,
    ),
}

# Table 8: Snap Video FIT, 6 blocks x 4 global layers, 0 local layers, patch 1x4x4, group 16x5x4 (models/fit.py)
TABLE8 = {
    "fit_500m": dict(
        patch_size=(1, 4, 4),
        group_size=(16, 5, 4),
        patch_dim=768,
        latent_dim=1024,
        num_latents=512,
        cond_dim=768,
        num_blocks=6,
        global_layers=4,
        patch_head_dim=48,
        latent_head_dim=64,
        dropout=0.1,
    ),
    "fit_3_9b": dict(
        patch_size=(1, 4, 4),
        group_size=(16, 5, 4),
        patch_dim=1024,
        latent_dim=3072,
        num_latents=768,
        cond_dim=1024,
        num_blocks=6,
        global_layers=4,
        patch_head_dim=64,
        latent_head_dim=128,
        dropout=0.1,
    ),
}
# the third column: the cascade's second stage (models/upsampler.py), 16 x 288 x 512 from 16 x 36 x 64 (x8). Table 8
# gives it the 3.9B's every row but the group size: 16 x 72 x 128 = 147,456 patches in 32 groups of 16 x 18 x 16,
# 768 latents (24 per group)
TABLE8["fit_3_9b_upsampler"] = dict(TABLE8["fit_3_9b"], input_size=(16, 288, 512), scale=8, group_size=(16, 18, 16))
UPSAMPLER_PARAMS = {"fit_3_9b_upsampler": 3.9e9}  # Table 8 names it "FIT 3.9B Upsampler" (fine-tuned from the 3.9B)

# Table 9: the optimiser of each backbone kind (the kit reads the U-Net's "Adam" as AdamW: models/registry.py)
TABLE9 = {
    "unet": {"name": "adam", "lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.01},
    "fit": {"name": "lamb", "lr": 5e-3, "betas": (0.9, 0.99), "weight_decay": 0.01},
}
