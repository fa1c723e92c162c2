"""Fit prototypes for a teacher, once: embed a seeded sample of the training images with the frozen
teacher (Ray Data batch inference, or one process), spherical k-means them, write a DINO-layout head
file + fit.json into the cache, and point the config at it.

`ensure_prototypes(cfg)` is what a training run, a Tune trial and `experiments/run.py fit-prototypes`
call: a cache hit costs a fingerprint and a checksum; a miss fits (under a lock) and then hits.
Embedding preprocessing is the evaluation suite's (resize to size/0.875, centre crop `size`, the
teacher's mean/std) at the global crop size, so the prototypes describe what the teacher sees of
whole images at training resolution.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rob_ray.config import Config, ConfigError, config_to_dict
from rob_ray.data.sources import ImageTable, scan_images
from rob_ray.prototypes.cache import (
    data_fingerprint,
    fit_lock,
    key_hash,
    read_verified,
    slug,
    teacher_fingerprint,
    write_verified,
)
from rob_ray.prototypes.head import head_state_from_prototypes, recommend_temperature, size_histogram, target_stats
from rob_ray.prototypes.kmeans import spherical_kmeans

__all__ = ["default_cache_dir", "ensure_prototypes", "fit_prototypes", "format_report"]

HEAD_FILE, HEAD_META = "head.pth", "fit.json"
EMB_FILE, EMB_META = "embeddings.pt", "embeddings.json"
KEY_VERSION = 1  # bump when the embedding or clustering recipe changes: old cache entries stop matching


def default_cache_dir(cfg: Config) -> Path:
    """`teacher.prototypes.cache_dir`, else `<run.storage_path>/prototypes` (shared by every run and
    Tune trial under that storage), else for a URI storage `~/.cache/rob_ray/prototypes`."""
    from rob_ray.storage import is_uri

    protos = cfg.teacher.prototypes
    if protos is not None and protos.cache_dir:
        return Path(protos.cache_dir).expanduser().resolve()
    if is_uri(cfg.run.storage_path):
        return Path("~/.cache/rob_ray/prototypes").expanduser().resolve()
    return Path(cfg.run.storage_path).expanduser().resolve() / "prototypes"


def _embedding_config(cfg: Config) -> dict[str, Any]:
    """The run's config with the teacher's prototypes removed: the embedding pass needs only its backbone."""
    d = config_to_dict(cfg)
    d["teacher"] = {**d["teacher"], "prototypes": None}
    return d


def _sample(n_table: int, n: int, seed: int) -> np.ndarray:
    if n >= n_table:
        return np.arange(n_table, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n_table, size=n, replace=False)).astype(np.int64)


def _embed(cfg: Config, table: ImageTable, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float32 teacher embeddings and (N,) labels of `table` (unreadable images dropped)."""
    from rob_ray.eval.embedders import EmbedSpec

    fit = cfg.teacher.prototypes.fit
    spec = EmbedSpec("teacher", "prototype fit", _embedding_config(cfg))
    if fit.engine == "ray":
        from rob_ray.eval.ray_features import ray_extract_features
        from rob_ray.train.launch import init_ray

        init_ray(cfg)
        return ray_extract_features(spec, table, size, batch_size=fit.batch_size, num_actors=fit.num_actors,
                                    cpus_per_actor=cfg.data.cpus_per_actor)
    from rob_ray.eval.embedders import build_embedder
    from rob_ray.eval.features import extract_features

    device = "cuda" if torch.cuda.is_available() else "cpu"
    emb = build_embedder(spec, device)
    return extract_features(emb, table, size, emb.mean, emb.std, fit.batch_size, device)


def _cluster(x: torch.Tensor, fit: Any, verbose: bool) -> tuple[Any, str]:
    """k-means where the compute is: this process's GPU, else (Ray engine) a GPU task on the cluster,
    else this process's CPU."""
    kwargs = dict(iterations=fit.iterations, seed=fit.seed, init=fit.init, verbose=verbose)
    if torch.cuda.is_available():
        return spherical_kmeans(x, fit.k, device="cuda", **kwargs), torch.cuda.get_device_name()
    if fit.engine == "ray":
        import ray

        if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0:
            task = ray.remote(num_gpus=1, num_cpus=1)(_remote_kmeans)
            return ray.get(task.remote(x, fit.k, kwargs)), "a cluster GPU (Ray task)"
    return spherical_kmeans(x, fit.k, device="cpu", **kwargs), f"cpu ({torch.get_num_threads()} threads)"


def _remote_kmeans(x: torch.Tensor, k: int, kwargs: dict[str, Any]):
    return spherical_kmeans(x, k, device="cuda", **kwargs)


def _embeddings(cfg: Config, table: ImageTable, sample: np.ndarray, size: int, folder: Path,
                verbose: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The sample's embeddings, from the cache or embedded now (then cached)."""
    from rob_ray.data.sources import _subset

    with fit_lock(folder):
        hit = read_verified(folder, EMB_FILE, EMB_META)
        if hit is not None:
            tensors, meta = hit
            if verbose:
                print(f"[rob_ray] prototypes: reusing {meta['images']} cached embeddings from {folder}", flush=True)
            return tensors["embeddings"].float(), tensors["labels"], {**meta, "cached": True}
        t0 = time.perf_counter()
        if verbose:
            print(f"[rob_ray] prototypes: embedding {len(sample)} images at {size} px with the teacher "
                  f"({cfg.teacher.prototypes.fit.engine} engine)", flush=True)
        x, y = _embed(cfg, _subset(table, sample), size)
        # Stored (and clustered) in float16: half the disk, and a refit from the cache gives the same head.
        x = torch.nn.functional.normalize(x.float(), dim=1).half()
        meta = {"images": int(x.shape[0]), "requested": len(sample), "dim": int(x.shape[1]), "size": size,
                "seconds": round(time.perf_counter() - t0, 1)}
        write_verified(folder, EMB_FILE, {"embeddings": x, "labels": y.long()}, meta, EMB_META)
        return x.float(), y.long(), {**meta, "cached": False}


def _purity(assign: torch.Tensor, labels: torch.Tensor, k: int) -> float | None:
    """Fraction of images whose cluster's majority label is their own (None without labels)."""
    ok = labels >= 0
    if not bool(ok.any()):
        return None
    a, y = assign[ok], labels[ok]
    n_cls = int(y.max()) + 1
    table = torch.zeros(k, n_cls, dtype=torch.int64).index_put_((a, y), torch.ones_like(a), accumulate=True)
    return float(table.max(1).values.sum()) / float(ok.sum())


def fit_prototypes(cfg: Config, table: ImageTable | None = None, verbose: bool = True,
                   fit_missing: bool = True) -> dict[str, Any] | None:
    """Fit (or find in the cache) the prototypes `cfg.teacher.prototypes.fit` asks for.

    Returns the fit.json contents plus `head` (the head file's path), `dir` and `cache_hit`; None on a
    cache miss with `fit_missing=False` (a dry run looks, never fits).
    Raises ConfigError (one line) when the data cannot support the fit.
    """
    protos = cfg.teacher.prototypes
    if protos is None or protos.fit is None:
        raise ConfigError("config error: teacher.prototypes.fit is not set; add teacher: {prototypes: {fit: {k: 8192, "
                          "images: 50000}}} to the config")
    fit = protos.fit
    if table is None:
        table = scan_images(cfg.data.path, cfg.data.format, cfg.data.parquet_image_column,
                            cfg.data.parquet_label_column, cfg.data.max_images)
    n = min(fit.images, len(table))
    if n < fit.k:
        raise ConfigError(f"config error: teacher.prototypes.fit.k ({fit.k}) exceeds the {len(table)} images under "
                          f"data.path '{cfg.data.path}'; k-means needs at least one image per prototype: lower k")
    sample = _sample(len(table), n, fit.seed)
    size = fit.size or cfg.augment.global_size
    teacher_key = teacher_fingerprint(config_to_dict(cfg)["teacher"])
    data_key = data_fingerprint(table, sample)
    emb_key = key_hash({"teacher": teacher_key, "data": data_key, "images": n, "seed": fit.seed, "size": size,
                        "version": KEY_VERSION})
    head_key = key_hash({"embeddings": emb_key, "k": fit.k, "iterations": fit.iterations, "init": fit.init})
    root = default_cache_dir(cfg)
    label = slug(cfg.teacher.name or cfg.teacher.arch or cfg.teacher.kind)
    head_dir, emb_dir = root / f"{label}-k{fit.k}-{head_key}", root / f"emb-{emb_key}"
    hit = read_verified(head_dir, HEAD_FILE, HEAD_META, load=False)
    if hit is not None:
        return {**hit[1], "head": str(head_dir / HEAD_FILE), "dir": str(head_dir), "cache_hit": True}
    if not fit_missing:
        return None
    with fit_lock(head_dir):
        hit = read_verified(head_dir, HEAD_FILE, HEAD_META, load=False)  # another process fitted it meanwhile
        if hit is not None:
            return {**hit[1], "head": str(head_dir / HEAD_FILE), "dir": str(head_dir), "cache_hit": True}
        x, y, emb_meta = _embeddings(cfg, table, sample, size, emb_dir, verbose)
        if x.shape[0] < fit.k:
            raise ConfigError(f"config error: only {x.shape[0]} of {n} sampled images were readable, fewer than "
                              f"teacher.prototypes.fit.k ({fit.k}); lower k or fix the data")
        t0 = time.perf_counter()
        if verbose:
            print(f"[rob_ray] prototypes: spherical k-means, K={fit.k} on {x.shape[0]} x {x.shape[1]} embeddings",
                  flush=True)
        result, device = _cluster(x, fit, verbose)
        km_s = time.perf_counter() - t0
        stats = target_stats(x, result.centroids)
        meta = {
            "teacher": teacher_key, "teacher_label": label, "data_path": str(cfg.data.path), "data_fingerprint": data_key,
            "data_images": len(table), "sample_size": n, "embedded_images": int(x.shape[0]), "embed_dim": int(x.shape[1]),
            "size": size, "k": fit.k, "seed": fit.seed, "init": result.init, "max_iterations": fit.iterations,
            "iterations": result.iterations, "objective": result.objective, "objective_history": result.history,
            "reseeded_empty_clusters": result.reseeded, "empty_clusters": int((result.counts == 0).sum()),
            "cluster_sizes": {"min": int(result.counts.min()), "median": float(result.counts.float().median()),
                              "max": int(result.counts.max()), "histogram": size_histogram(result.counts)},
            "label_purity": _purity(result.assignments, y, fit.k),
            "targets": stats, "recommended_teacher_temp": recommend_temperature(stats),
            "embedding_key": emb_key, "embeddings_cached": emb_meta["cached"],
            "seconds": {"embed": emb_meta.get("seconds") if not emb_meta["cached"] else 0.0, "kmeans": round(km_s, 1)},
            "device": device, "created_unix": int(time.time()), "pid": os.getpid(), "version": KEY_VERSION,
        }
        meta = write_verified(head_dir, HEAD_FILE, head_state_from_prototypes(result.centroids), meta, HEAD_META)
    return {**meta, "head": str(head_dir / HEAD_FILE), "dir": str(head_dir), "cache_hit": False}


def format_report(r: dict[str, Any]) -> str:
    """Human-readable summary of a fit.json (what `fit-prototypes` prints)."""
    sizes = r["cluster_sizes"]
    lines = [
        f"[rob_ray] prototypes: {'reused' if r.get('cache_hit') else 'fitted'} K={r['k']} on {r['embedded_images']} "
        f"images ({r['embed_dim']}-d, {r['size']} px) of {r['data_images']}: mean cosine to prototype "
        f"{r['objective']:.4f} after {r['iterations']} iterations ({r['init']} init, seed {r['seed']})",
        f"[rob_ray] cluster sizes min {sizes['min']} / median {sizes['median']:g} / max {sizes['max']}; "
        f"{r['empty_clusters']} empty; histogram {sizes['histogram']}"
        + (f"; label purity {100 * r['label_purity']:.1f}%" if r.get("label_purity") is not None else ""),
        "| teacher_temp | target entropy (nats) | prototypes per image (exp H) | median top-1 p | usage H / log K |",
        "|---:|---:|---:|---:|---:|",
    ]
    for s in r["targets"]:
        lines.append(f"| {s['teacher_temp']:g} | {s['entropy']:.2f} | {s['perplexity']:.1f} | {s['median_top1']:.2f} | "
                     f"{s['usage_entropy_frac']:.3f} |")
    lines.append(f"[rob_ray] recommended method.teacher_temp: {r['recommended_teacher_temp']:g} (median image: half "
                 "its target mass on its nearest prototype); head: " + r["head"])
    return "\n".join(lines)


def ensure_prototypes(cfg: Config, table: ImageTable | None = None, verbose: bool = True,
                      fit_missing: bool = True) -> Config:
    """`cfg` with `teacher.prototypes.head` pointing at the fitted head (fitting it first on a cache
    miss) and `cache_dir` pinned, so workers and Tune trials find the same files. A dino method whose
    config leaves `teacher_temp` unset gets the recommended temperature. Without `prototypes.fit` (or on
    a cache miss with `fit_missing=False`): `cfg` unchanged."""
    protos = cfg.teacher.prototypes
    if protos is None or protos.fit is None:
        return cfg
    report = fit_prototypes(cfg, table, verbose=verbose, fit_missing=fit_missing)
    if report is None:
        return cfg
    out = cfg.model_copy(deep=True)
    out.teacher.prototypes.head = report["head"]
    out.teacher.prototypes.cache_dir = str(default_cache_dir(cfg))
    if verbose:
        print(format_report(report) if not report["cache_hit"] else
              f"[rob_ray] prototypes: reusing K={report['k']} fitted on {report['embedded_images']} images "
              f"({report['dir']})", flush=True)
    if out.method.name == "dino" and "teacher_temp" not in cfg.method.model_fields_set:
        out.method.teacher_temp = float(report["recommended_teacher_temp"])
        if verbose:
            print(f"[rob_ray] method.teacher_temp = {out.method.teacher_temp:g}, derived from the fitted head's targets "
                  "(set method.teacher_temp to choose another)", flush=True)
    return out
