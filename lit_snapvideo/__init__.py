"""lit-snapvideo: a Lightning experiment kit reproducing Snap Video (Menapace et al., CVPR 2024).

Modules: ``edm`` (Snap-EDM preconditioning and loss), ``sampling`` (schedules, solvers, guidance), ``config``
(experiment schemas), ``models`` (FIT, 3D U-Net, text encoders, presets), ``data`` (videos, data sets, DataModule).
"""

__version__ = "0.1.0"
