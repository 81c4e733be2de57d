"""Data: video IO (``video``), record sources and the torch Dataset (``datasets``), the embedded moving-shapes
set (``shapes``), and the one DataModule both backbones train on (``datamodule``)."""

from .datamodule import EDMDataModule
from .datasets import DataError
from .shapes import generate_shapes, parse_caption
from .video import BadFileError, crop_padding, pad_video

__all__ = ["EDMDataModule", "DataError", "generate_shapes", "parse_caption", "BadFileError", "crop_padding", "pad_video"]
