"""Data: video IO (``video``), record sources and the moving-shapes set (``datasets``), and the
one DataModule both backbones train on (``datamodule``)."""

from .datamodule import EDMDataModule
from .datasets import DataError, generate_shapes, parse_caption
from .video import BadFileError, crop_padding, pad_video

__all__ = ["EDMDataModule", "DataError", "generate_shapes", "parse_caption", "BadFileError", "crop_padding", "pad_video"]
