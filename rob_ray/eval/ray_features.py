"""Frozen features as Ray Data batch inference: an actor pool, each actor builds its model once
(on a GPU when the cluster has one) and embeds batches of image indices.

The preprocessing and forward are `rob_ray.eval.features.load_eval_images` + `embed_uint8`, the
same code as the direct path, so both give the same embeddings (tested). A Ray-edge module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import ray.data
import torch

from rob_ray.data.sources import ImageTable
from rob_ray.data.stream import SamplePositions
from rob_ray.errors import EvalInputError
from rob_ray.eval.embedders import EmbedSpec, build_embedder
from rob_ray.eval.features import embed_uint8, load_eval_images

__all__ = ["EmbedActor", "ray_extract_features"]


class EmbedActor:
    """`map_batches` callable: {"id": image indices} -> {"id", "label", "valid", "embedding" (n, D) float32}."""

    def __init__(self, spec: EmbedSpec, table: list, size: int, channels_last: bool = True) -> None:
        self.table: ImageTable = ray.get(table[0])  # wrapped in a list so Ray does not resolve it eagerly
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.embedder = build_embedder(spec, self.device)
        if channels_last:
            self.embedder = self.embedder.to(memory_format=torch.channels_last)
        self.size, self.channels_last = size, channels_last

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        idx = np.asarray(batch["id"], dtype=np.int64)
        images, ok = load_eval_images(self.table, idx, self.size)
        emb = embed_uint8(self.embedder, images, self.embedder.mean, self.embedder.std, self.device,
                          self.channels_last).numpy()
        return {"id": idx, "label": self.table.labels[idx], "valid": ok, "embedding": emb}


def ray_extract_features(spec: EmbedSpec, table: ImageTable | Any, size: int, *, batch_size: int = 128,
                         num_actors: int = 1, cpus_per_actor: float = 1.0, gpus_per_actor: float | None = None,
                         channels_last: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (N, D) and labels (N,) of every readable image of `table`, in table order.

    Args:
        spec: what to embed with (built once per actor).
        table: an `ImageTable` or an ObjectRef to one. size: eval crop side (resize to size/0.875, centre-crop).
        gpus_per_actor: None = 1 when the cluster has GPUs, else 0.
    """
    table_ref = table if isinstance(table, ray.ObjectRef) else ray.put(table)
    n = len(ray.get(table_ref)) if isinstance(table, ray.ObjectRef) else len(table)
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    # Read tasks ask for no CPU: on a small node a 1-CPU read would wait behind the actors forever.
    ds = ray.data.read_datasource(SamplePositions(0, n, batch_size), num_cpus=0, concurrency=1)
    ds = ds.map_batches(EmbedActor, fn_constructor_kwargs={"spec": spec, "table": [table_ref], "size": size,
                                                           "channels_last": channels_last},
                        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=num_actors),
                        num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None, zero_copy_batch=True)
    ids, labels, valid, feats = [], [], [], []
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        ids.append(b["id"])
        labels.append(b["label"])
        valid.append(b["valid"])
        feats.append(b["embedding"])
    order = np.argsort(np.concatenate(ids), kind="stable")  # table order whatever the block order
    keep = np.concatenate(valid)[order]
    if not keep.any():
        raise EvalInputError("no readable images to embed")
    f = np.concatenate(feats)[order][keep]
    y = np.concatenate(labels)[order][keep]
    return torch.from_numpy(np.ascontiguousarray(f)), torch.from_numpy(y.astype(np.int64))
