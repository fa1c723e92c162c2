"""Evaluation of frozen representations (plain torch): features, k-NN, linear probe, low-shot,
online k-NN + collapse diagnostics during training, the `eval` command's runner and plots.
Ray Data batch inference lives in `rob_ray.eval.ray_features` (imported only when used)."""

from rob_ray.eval.embedders import Embedder, EmbedSpec, build_embedder
from rob_ray.eval.features import embed_uint8, eval_tensor, extract_features
from rob_ray.eval.knn import KNN_KS, knn_accuracies, knn_predict, knn_top1
from rob_ray.eval.linear import fit_logistic, linear_probe
from rob_ray.eval.lowshot import lowshot_eval, lowshot_indices

__all__ = ["KNN_KS", "EmbedSpec", "Embedder", "build_embedder", "embed_uint8", "eval_tensor", "extract_features",
           "fit_logistic", "knn_accuracies", "knn_predict", "knn_top1", "linear_probe", "lowshot_eval",
           "lowshot_indices"]
