"""Data: image sources, decoding, multi-crop policies and the per-worker sample stream."""

from rob_ray.data.decode import decode_rgb
from rob_ray.data.mapper import MultiCropMapper
from rob_ray.data.multicrop import MultiCropAugment, sample_crop_box, sample_seed
from rob_ray.data.policy import CropPolicy, build_policy
from rob_ray.data.schedule import SampleSchedule
from rob_ray.data.sources import DataSourceError, ImageTable, scan_images

__all__ = [
    "CropPolicy",
    "DataSourceError",
    "ImageTable",
    "MultiCropAugment",
    "MultiCropMapper",
    "SampleSchedule",
    "build_policy",
    "decode_rgb",
    "sample_crop_box",
    "sample_seed",
    "scan_images",
]
