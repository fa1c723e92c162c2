"""Fitted prototypes for headless teachers (DINOv2/v3, MAE, any backbone): spherical k-means of the
frozen teacher's embeddings, saved as a DINO-layout head so the full RoB recipe applies. Plain torch
except the embedding pass (Ray Data batch inference, or one process)."""

from rob_ray.prototypes.head import head_state_from_prototypes, recommend_temperature, target_stats
from rob_ray.prototypes.kmeans import KMeansResult, assign, spherical_kmeans

__all__ = ["KMeansResult", "assign", "ensure_prototypes", "fit_prototypes", "head_state_from_prototypes",
           "recommend_temperature", "spherical_kmeans", "target_stats"]


def __getattr__(name: str):  # fit.py imports the config and the data layer: only when asked for
    if name in ("ensure_prototypes", "fit_prototypes"):
        from rob_ray.prototypes import fit

        return getattr(fit, name)
    raise AttributeError(name)
