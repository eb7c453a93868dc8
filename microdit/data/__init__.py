"""Datasets: image and latent shards with manifests, the synthetic captioned dataset,
cifar-captions builders, encoding with frozen encoders, and the training reader."""

from microdit.data.encode import encode_dataset, verify_dataset
from microdit.data.images import write_image_dataset
from microdit.data.manifest import DataError, Manifest, ShardInfo, load_manifest
from microdit.data.reader import DataConfig, LatentBatches, make_loader, read_dataset
from microdit.data.synthetic import synthetic_sample

__all__ = [
    "DataConfig",
    "DataError",
    "LatentBatches",
    "Manifest",
    "ShardInfo",
    "encode_dataset",
    "load_manifest",
    "make_loader",
    "read_dataset",
    "synthetic_sample",
    "verify_dataset",
    "write_image_dataset",
]
