"""Per-epoch evaluation inside training: online k-NN on a small labelled held-out set (the signal
Tune optimises) and collapse diagnostics of the student (plain torch; no Ray).

The loop calls the hook at every logging step; it acts only at epoch ends (and the last step).
Rank 0 computes, the numbers are broadcast, so every rank reports the same metrics at the same
steps (Ray Train's report is a barrier).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rob_ray.eval.features import embed_uint8, load_eval_images
from rob_ray.eval.knn import knn_top1
from rob_ray.eval.linear import accuracy, fit_logistic

__all__ = ["N_VALUES", "EpochEvaluator", "embedding_std", "online_linear_top1"]

_NAN = float("nan")
# What `EpochEvaluator._compute` returns: k-NN top-1, embedding std, its healthy value, prototypes used,
# images measured, linear top-1 (NaN where not computed).
N_VALUES = 6


def embedding_std(embeddings: torch.Tensor) -> float:
    """Mean over dimensions of the per-dimension std of L2-normalised embeddings (N, D).

    About 1/sqrt(D) when embeddings spread over the sphere, 0 when they all collapse to one
    point (the collapse measure of SimSiam, Chen & He 2021, Sec. 4.1).
    """
    z = F.normalize(embeddings.float(), dim=1)
    return float(z.std(dim=0).mean()) if z.shape[0] > 1 else _NAN


def online_linear_top1(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                       query_labels: torch.Tensor) -> float:
    """Top-1 % on the queries of a linear classifier fitted on the bank features (N, D) / labels (N,).

    L2-normalised features, multinomial logistic regression (lambda 0.0025) solved by full-batch
    L-BFGS in float64 (`rob_ray.eval.linear.fit_logistic`, MSN's low-shot classifier): no sampling,
    no learning rate to tune, the same number for the same features.
    """
    xb, xq = F.normalize(bank.float(), dim=1), F.normalize(queries.float(), dim=1)
    classes = int(max(int(bank_labels.max()), int(query_labels.max()))) + 1
    w, b = fit_logistic(xb, bank_labels.long(), classes)
    return accuracy(w, b, xq, query_labels.long())


class EpochEvaluator:
    """Call `hook(done_steps, student, probe_images)` at each logging step; returns extra metrics
    (empty except at epoch ends / the last step).

    Metrics: `online_knn_top1` (%, when eval.online_knn_every_epochs > 0 and due),
    `online_knn_epoch` (epochs done, float), `online_linear_top1` (%, with eval.online_linear, when
    the k-NN runs), `embedding_std`, `embedding_std_healthy` (1/sqrt(D)), `probe_prototypes_used`
    (distinct student argmax prototypes on the probe images).

    `hold_images=False`: rank 0 does not decode the held-out images (an evaluation actor holds them).
    """

    def __init__(self, eval_cfg: Any, *, rank: int, world_size: int, device: torch.device, mean: tuple[float, ...],
                 std: tuple[float, ...], size: int, steps_per_epoch: int, end_step: int,
                 channels_last: bool = True, batch_size: int = 256, hold_images: bool = True) -> None:
        self.cfg, self.rank, self.world_size, self.device = eval_cfg, rank, world_size, device
        self.mean, self.std, self.spe, self.end = mean, std, steps_per_epoch, end_step
        self.channels_last, self.batch_size = channels_last, batch_size
        self.every = int(eval_cfg.online_knn_every_epochs)
        self.bank = self.queries = None
        if self.every and rank == 0 and hold_images:
            self.bank = _load_split(Path(eval_cfg.online_knn_path) / "train", size, eval_cfg.online_knn_max_images)
            self.queries = _load_split(Path(eval_cfg.online_knn_path) / "val", size, eval_cfg.online_knn_max_images)

    def __call__(self, done: int, student: nn.Module, probe: torch.Tensor) -> dict[str, float]:
        """done: steps completed; probe: (N, 3, S, S) normalised training views (used when no held-out set)."""
        if not self.due(done):
            return {}
        run_knn = self.knn_due(done)
        values = torch.full((N_VALUES,), _NAN, dtype=torch.float64)
        if self.rank == 0:
            values = torch.tensor(self._compute(student, probe, run_knn), dtype=torch.float64)
        if self.world_size > 1 and torch.distributed.is_initialized():
            values = values.to(self.device)
            torch.distributed.broadcast(values, src=0)
            values = values.cpu()
        return self._metrics(done, run_knn, values.tolist())

    @property
    def keeps_best(self) -> bool:
        """Whether this evaluator updates the best checkpoint itself (async mode); the loop then does not."""
        return False

    def _metrics(self, step: int, run_knn: bool, values: list[float], warn: bool = True) -> dict[str, float]:
        """The metrics of one evaluation of the weights after `step` steps (values as `_compute` returns)."""
        knn, std, healthy, used, n, linear = values
        out = {"embedding_std": std, "embedding_std_healthy": healthy, "probe_prototypes_used": used}
        if run_knn:
            out.update({"online_knn_top1": knn, "online_knn_epoch": step / self.spe, "online_linear_top1": linear})
        if self.rank == 0 and warn:
            self._warn_if_collapsed(step, std, healthy, used, n)
        return {k: v for k, v in out.items() if math.isfinite(v)}  # no NaN in metrics.jsonl

    def due(self, done: int) -> bool:
        """An evaluation point: an epoch end or the last step."""
        return done % self.spe == 0 or done == self.end

    def knn_due(self, done: int) -> bool:
        return bool(self.every) and (done == self.end or (done // self.spe) % self.every == 0)

    @torch.no_grad()
    def _compute(self, student: nn.Module, probe: torch.Tensor, run_knn: bool) -> list[float]:
        was_training = student.training
        student.eval()
        try:
            knn = linear = _NAN
            if self.bank is not None:
                fb = self._embed(student, self.bank[0])
                if run_knn:
                    fq = self._embed(student, self.queries[0])
                    knn = knn_top1(fb, self.bank[1], fq, self.queries[1], self.cfg.k, self.cfg.temperature)
                    if self.cfg.online_linear:
                        with torch.enable_grad():  # L-BFGS needs gradients; _compute runs under no_grad
                            linear = online_linear_top1(fb.cpu(), self.bank[1], fq.cpu(), self.queries[1])
                probe_emb = fb
            else:
                probe_emb = torch.cat([student.embed(p).float() for p in probe.split(self.batch_size)])
            head = getattr(student, "head", None)
            used = _NAN
            if head is not None:
                scores = torch.cat([head(e.to(self.device)).float() for e in probe_emb.split(self.batch_size)])
                used = float(scores.argmax(1).unique().numel())
            dim = probe_emb.shape[1]
            return [knn, embedding_std(probe_emb), 1 / math.sqrt(dim), used, float(probe_emb.shape[0]), linear]
        finally:
            student.train(was_training)

    def _embed(self, student: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([embed_uint8(student.embed, chunk, self.mean, self.std, self.device, self.channels_last)
                          for chunk in images.split(self.batch_size)])

    def _warn_if_collapsed(self, done: int, std: float, healthy: float, used: float, n: float) -> None:
        if done < self.spe:
            # A random-init CNN at small crops maps every image to nearly one direction (measured:
            # MobileNetV3-small at 32 px, std 0.003 x healthy); judge only after a full epoch.
            return
        collapsed_std = math.isfinite(std) and std < self.cfg.collapse_std_ratio * healthy
        one_prototype = math.isfinite(used) and used <= 1 and n >= 8
        if collapsed_std or one_prototype:
            print(f"[rob_ray] warning: the student looks collapsed after {done / self.spe:g} epochs "
                  f"(embedding std {std:.4f}, healthy ~{healthy:.4f}; {used:g} prototype(s) used on {n:g} images): "
                  "lower optim.lr, check method.teacher_temp / student_temp, or try method.centering=ema",
                  flush=True)


def _load_split(root: Path, size: int, max_images: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded, eval-cropped uint8 images (N, 3, size, size) and labels (N,) of one labelled split."""
    from rob_ray.data.sources import DataSourceError, scan_images

    table = scan_images(root, max_images=max_images)
    images, ok = load_eval_images(table, np.arange(len(table)), size)
    labels = torch.from_numpy(table.labels[ok])
    if int((labels >= 0).sum()) == 0:
        raise DataSourceError(f"online k-NN split '{root}' has no class folders; it must be a labelled ImageFolder")
    return images[torch.from_numpy(ok)], labels
