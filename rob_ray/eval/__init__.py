"""Evaluation of frozen representations: feature extraction and k-NN (plain torch)."""

from rob_ray.eval.features import eval_tensor, extract_features
from rob_ray.eval.knn import knn_predict, knn_top1

__all__ = ["eval_tensor", "extract_features", "knn_predict", "knn_top1"]
