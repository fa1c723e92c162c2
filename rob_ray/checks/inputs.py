"""Input checks that need neither Ray nor a model: file types, folder layouts, storage, GPU, weights.

Each one turns an input that would fail minutes later (inside a worker, after an epoch, after Ray
started) into one `ConfigError` line naming the key, what was found and the fix. `check_inputs`
runs them all; preflight calls it first, so `--dry-run`, `train`, `demo` and every Tune corner get
the same checks. Only the file system and `torch.cuda` are consulted: a second, at most.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from rob_ray.errors import ConfigError

__all__ = [
    "KNOWN_URI_SCHEMES",
    "check_config_file",
    "check_data_files",
    "check_gpu_available",
    "check_inputs",
    "check_labelled_split",
    "check_storage",
    "check_teacher_weights",
    "sniff",
]

# URI schemes pyarrow's FileSystem.from_uri opens (Ray Train storage goes through it).
KNOWN_URI_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az", "mock")

_MAGIC = (
    (b"PAR1", "a Parquet file"),
    (b"PK\x03\x04", "a zip archive (e.g. a torch checkpoint)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip file"),
    (b"\x7fELF", "an executable"),
    (b"%PDF", "a PDF"),
    (b"\x80", "a Python pickle (e.g. a legacy torch checkpoint)"),
)


def sniff(path: str | Path, n: int = 8192) -> str:
    """What a file looks like by its first bytes: one of the `_MAGIC` descriptions, 'safetensors',
    'text', 'binary data' or 'an empty file'."""
    with open(path, "rb") as f:
        head = f.read(n)
    if not head:
        return "an empty file"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (100 << 20):
        return "safetensors"  # an 8-byte little-endian header length, then the JSON header
    if b"\x00" in head:
        return "binary data"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a multi-byte character cut at the end of the window is fine
            return "binary data"
    return "text"


def check_config_file(path: str | Path | None) -> None:
    """`--config` must be a text (YAML) file; a checkpoint, image or Parquet file is named as such."""
    if path is None or not Path(path).is_file():
        return  # a missing file is reported by load_config
    kind = sniff(path)
    if kind not in ("text", "an empty file"):
        raise ConfigError(f"config error: --config '{path}' is {kind}, not a YAML text file; pass the YAML config "
                          "(e.g. experiments/configs/demo.yaml)")


def _parquet_ok(f: Path) -> bool:
    """Parquet files start and end with PAR1."""
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(4)
            fh.seek(max(size - 4, 0))
            tail = fh.read(4)
    except OSError:
        return False
    return size >= 12 and head == tail == b"PAR1"


def check_data_files(cfg) -> None:
    """Parquet data must be Parquet: a text or image file named `.parquet` fails here, not in pyarrow."""
    root = Path(cfg.data.path)
    if not root.exists():
        return  # scan_images names the missing path
    if root.is_file():
        if cfg.data.format == "imagefolder":
            return  # scan_images says a file is not a folder
        if (cfg.data.format == "parquet" or root.suffix == ".parquet") and not _parquet_ok(root):
            raise ConfigError(f"config error: data.path = '{root}' is {sniff(root)}, not a Parquet file; point "
                              "data.path at a Parquet file/folder or an image folder")
        return
    if cfg.data.format == "parquet" or (cfg.data.format == "auto" and not _has_images(root)):
        bad = next((f for f in sorted(root.rglob("*.parquet")) if not _parquet_ok(f)), None)
        if bad is not None:
            raise ConfigError(f"config error: data.path '{root}' holds '{bad}', which is {sniff(bad)}, not Parquet; "
                              "remove it or fix the file")


def _has_images(root: Path) -> bool:
    from rob_ray.data.sources import IMAGE_EXTENSIONS

    return any(f.lower().endswith(IMAGE_EXTENSIONS) for _, _, fs in os.walk(root) for f in fs)


def check_labelled_split(path: str | None, key: str) -> None:
    """`path` must hold `train/` and `val/`, each with class folders holding images (ImageFolder)."""
    if not path:
        return
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"config error: {key} = '{path}' is not a folder; it must hold labelled train/ and val/ "
                          "ImageFolders (train/<class>/*.jpg, val/<class>/*.jpg)")
    missing = [split + "/" for split in ("train", "val") if not (root / split).is_dir()]
    if missing:
        raise ConfigError(f"config error: {key} = '{path}' has no {' or '.join(missing)} folder; it must hold labelled "
                          "train/ and val/ ImageFolders (train/<class>/*.jpg, val/<class>/*.jpg)")
    for split in ("train", "val"):
        d = root / split
        classes = [c for c in d.iterdir() if c.is_dir() and _has_images(c)]
        if not classes:
            raise ConfigError(f"config error: {key} = '{path}': {split}/ has no class folders with images; "
                              f"put them as {split}/<class>/*.jpg")


def check_storage(cfg) -> None:
    """`run.storage_path`: a URI with a scheme pyarrow opens, or a local folder this user can write."""
    sp = cfg.run.storage_path
    from rob_ray.storage import is_uri

    if is_uri(sp):
        scheme = urlparse(sp).scheme.lower()
        if scheme not in KNOWN_URI_SCHEMES:
            raise ConfigError(f"config error: run.storage_path = {sp!r} has an unknown scheme '{scheme}://'; use a local "
                              f"path or one of {', '.join(s + '://' for s in KNOWN_URI_SCHEMES if s != 'mock')}")
        if scheme != "file":
            return  # remote: its credentials are checked when the run folder is first written
        local = Path(urlparse(sp).path)
    else:
        local = Path(sp).expanduser()
    target = local / cfg.run.name
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"config error: run.storage_path = '{sp}': '{probe}' is a file, not a folder; "
                          "choose a folder for the runs")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"config error: run.storage_path = '{sp}': '{probe}' is not writable by this user; "
                          "choose a folder you can write (or fix its permissions)")


def check_teacher_weights(cfg) -> None:
    """A timm teacher needs weights (random-init distillation is almost always a mistake), and
    weight files must look like weights (torch zip / pickle, or safetensors)."""
    t = cfg.teacher
    if t.name is None and t.kind == "timm" and t.arch and not t.pretrained and not t.checkpoint and not t.allow_random_init:
        raise ConfigError(f"config error: teacher.kind=timm '{t.arch}' has no weights (teacher.checkpoint unset, "
                          "teacher.pretrained=false) and would distil from a random network; set teacher.checkpoint "
                          "to a local weights file or teacher.pretrained=true, or teacher.allow_random_init=true if "
                          "that is really wanted")
    for key, value in (("teacher.checkpoint", t.checkpoint), ("teacher.head_checkpoint", t.head_checkpoint)):
        if value and Path(value).is_file():
            kind = sniff(value)
            if kind not in ("a zip archive (e.g. a torch checkpoint)", "a Python pickle (e.g. a legacy torch checkpoint)",
                            "safetensors"):
                raise ConfigError(f"config error: {key} = '{value}' is {kind}, not a weights file (.pth / .pt zip or "
                                  "pickle, or .safetensors); point it at the checkpoint")


def _cluster_to_join(cfg) -> bool:
    """Could `init_ray` join a cluster (which may have GPU nodes)? Decided without contacting Ray."""
    if cfg.scaling.ray_address == "local":
        return False
    if cfg.scaling.ray_address or os.environ.get("RAY_ADDRESS"):
        return True
    tmp = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    return tmp.is_file()  # written by `ray start` on this host


def check_gpu_available(cfg) -> None:
    """`scaling.use_gpu=true` needs a GPU here or a cluster to join that may have some."""
    if not cfg.scaling.use_gpu:
        return
    import torch

    if torch.cuda.is_available() or _cluster_to_join(cfg):
        return  # a joined cluster's GPUs are checked against the plan once connected
    build = "" if torch.version.cuda else " (this torch is a CPU-only build)"
    raise ConfigError("resource error: scaling.use_gpu=true, but this machine has no usable CUDA GPU" + build +
                      " and there is no Ray cluster to join; run on a GPU machine (check nvidia-smi and a CUDA build "
                      "of torch), join a cluster with GPU nodes (RAY_ADDRESS or scaling.ray_address), or set "
                      "scaling.use_gpu=false")


def check_inputs(cfg) -> None:
    """Every check of this module but the GPU one, cheapest first. Raises ConfigError (one line).

    `check_gpu_available` runs only when a run is launched (not for `--dry-run`: planning a GPU
    run for a cluster from a laptop is fine)."""
    check_storage(cfg)
    check_data_files(cfg)
    check_labelled_split(cfg.data.eval_path, "data.eval_path")
    if cfg.eval.online_knn_every_epochs:
        check_labelled_split(cfg.eval.online_knn_path, "eval.online_knn_path")
    check_teacher_weights(cfg)
