"""Print the learned adaLN scales (1 + s, mean over channels) of a FIT checkpoint against sigma.

    .venv/bin/python experiments/screen/modulation_scales.py runs/screen/fit_conv_mod_2400/version_0/checkpoints/last.ckpt
Index 1 of the modulation is the stem norm's scale, 3 the output norm's, 5 + 4 i the write attention norm of block i
(models/fit.py: ``AdaLNModulation`` order)."""

import sys

import torch

from lit_snapvideo.models.presets import example_inputs
from lit_snapvideo.module_loading import load_module

torch.set_num_threads(1)
module = load_module(sys.argv[1])
net = module.ema_backbone
if net.modulation is None:
    sys.exit(f"{sys.argv[1]}: this FIT has no sigma modulation")
_, _, cond = example_inputs(1, module.cfg.data.frames, tuple(module.cfg.data.pad_to), text_dim=module.text_encoder.dim)
cond["fps"] = torch.tensor([float(module.cfg.data.val_fps)])
with torch.no_grad():
    for sigma in (0.1, 1.0, 3.0, 10.0, 30.0, 80.0):
        c_noise = module.edm.scalings(torch.tensor([sigma]))[3].float()
        scales = 1 + net.modulation(net.cond_embed(c_noise, cond)[2])[0]  # (count, D)
        blocks = " ".join(f"{scales[5 + 4 * i].mean():.2f}" for i in range(len(net.blocks)))
        print(f"sigma {sigma:5g}: stem {scales[1].mean():.2f}  output {scales[3].mean():.2f}  write attention {blocks}")
