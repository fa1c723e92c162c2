"""Image sources: an ImageFolder tree, a flat folder, or Parquet (bytes or path column).

A source is scanned once into an `ImageTable` (paths or Parquet row references + labels),
which is small enough to ship through Ray's object store to every worker and data actor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rob_ray.data.decode import read_bytes
from rob_ray.errors import DataSourceError

__all__ = ["IMAGE_EXTENSIONS", "DataSourceError", "ImageTable", "scan_images"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")



@dataclass
class ImageTable:
    """What a sample index refers to. Exactly one of `paths` / `parquet_files` is used.

    Attributes:
        paths: image file paths (ImageFolder, flat folder, or Parquet path column).
        labels: int64 class ids, -1 where unlabelled.
        classes: class names when the source has class folders / a label column.
        parquet_files, parquet_rows: for Parquet bytes columns, (file id, row) per image.
    """

    paths: list[str] | None = None
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    classes: list[str] = field(default_factory=list)
    parquet_files: list[str] | None = None
    parquet_file_ids: np.ndarray | None = None
    parquet_rows: np.ndarray | None = None
    parquet_column: str = "image"
    _open_tables: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int) -> bytes | None:
        """Encoded bytes of image `index`; `None` when unreadable."""
        if self.paths is not None:
            return read_bytes(self.paths[index])
        fid = int(self.parquet_file_ids[index])
        table = self._open_tables.get(fid)
        if table is None:
            # Memory-mapped: actors share the page cache instead of copying the column.
            table = pq.read_table(self.parquet_files[fid], columns=[self.parquet_column], memory_map=True)
            self._open_tables[fid] = table
        value = table.column(0)[int(self.parquet_rows[index])].as_py()
        return value if isinstance(value, bytes | bytearray) else None

    def describe(self, index: int) -> str:
        if self.paths is not None:
            return self.paths[index]
        return f"{self.parquet_files[int(self.parquet_file_ids[index])]}#row{int(self.parquet_rows[index])}"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open_tables"] = {}
        return state


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _scan_folder(root: Path) -> ImageTable:
    subdirs = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    paths: list[str] = []
    labels: list[int] = []
    classes: list[str] = []
    if subdirs:
        for label, name in enumerate(subdirs):
            files = []
            for dirpath, _, filenames in os.walk(root / name, followlinks=True):
                files.extend(os.path.join(dirpath, f) for f in filenames if _is_image(f))
            files.sort()
            paths.extend(files)
            labels.extend([label] * len(files))
        classes = subdirs
    top = sorted(str(root / e.name) for e in os.scandir(root) if e.is_file() and _is_image(e.name))
    if top:
        paths.extend(top)
        labels.extend([-1] * len(top))
    return ImageTable(paths=paths, labels=np.asarray(labels, dtype=np.int64), classes=classes)


def _scan_parquet(path: Path, image_column: str, label_column: str | None) -> ImageTable:
    files = sorted(str(p) for p in path.rglob("*.parquet")) if path.is_dir() else [str(path)]
    if not files:
        raise DataSourceError(f"no .parquet files under '{path}'")
    file_ids, rows, labels, path_values = [], [], [], []
    bytes_column = None
    for fid, f in enumerate(files):
        schema = pq.read_schema(f)
        if image_column not in schema.names:
            raise DataSourceError(
                f"Parquet file '{f}' has no column '{image_column}' (columns: {', '.join(schema.names)}); "
                "set data.parquet_image_column"
            )
        col_type = schema.field(image_column).type
        is_bytes = pa.types.is_binary(col_type) or pa.types.is_large_binary(col_type)
        if not is_bytes and not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
            raise DataSourceError(
                f"Parquet column '{image_column}' in '{f}' is {col_type}; it must hold encoded image bytes or paths"
            )
        if bytes_column is None:
            bytes_column = is_bytes
        n = pq.ParquetFile(f).metadata.num_rows
        if label_column is not None:
            if label_column not in schema.names:
                raise DataSourceError(f"Parquet file '{f}' has no label column '{label_column}'")
            labels.append(pq.read_table(f, columns=[label_column]).column(0).to_numpy(zero_copy_only=False))
        else:
            labels.append(np.full(n, -1))
        if is_bytes:
            file_ids.append(np.full(n, fid, dtype=np.int32))
            rows.append(np.arange(n, dtype=np.int64))
        else:
            base = Path(f).parent
            for p in pq.read_table(f, columns=[image_column]).column(0).to_pylist():
                path_values.append(p if os.path.isabs(p) else str(base / p))
    label_arr = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, dtype=np.int64)
    if bytes_column:
        return ImageTable(labels=label_arr, parquet_files=files, parquet_file_ids=np.concatenate(file_ids),
                          parquet_rows=np.concatenate(rows), parquet_column=image_column)
    return ImageTable(paths=path_values, labels=label_arr)


def scan_images(
    path: str | os.PathLike,
    fmt: str = "auto",
    parquet_image_column: str = "image",
    parquet_label_column: str | None = None,
    max_images: int | None = None,
) -> ImageTable:
    """List the images of a source. Raises DataSourceError with one line on a bad source."""
    root = Path(path)
    if not root.exists():
        raise DataSourceError(f"data path '{root}' does not exist; set data.path to an image folder or Parquet file")
    if fmt == "auto":
        is_parquet = root.suffix == ".parquet" or (root.is_dir() and not any(
            _is_image(f) for _, _, fs in os.walk(root) for f in fs) and any(root.rglob("*.parquet")))
        fmt = "parquet" if is_parquet else "imagefolder"
    if fmt == "parquet":
        table = _scan_parquet(root, parquet_image_column, parquet_label_column)
    else:
        if not root.is_dir():
            raise DataSourceError(f"data path '{root}' is a file; give a folder of images or set data.format=parquet")
        table = _scan_folder(root)
    if len(table) == 0:
        raise DataSourceError(f"no images found under '{root}' (looked for {', '.join(IMAGE_EXTENSIONS)})")
    if max_images is not None and max_images < len(table):
        # Even spread over the sorted list keeps every class represented.
        keep = np.linspace(0, len(table) - 1, max_images).round().astype(np.int64)
        table = _subset(table, keep)
    return table


def _subset(table: ImageTable, keep: np.ndarray) -> ImageTable:
    if table.paths is not None:
        return ImageTable(paths=[table.paths[i] for i in keep], labels=table.labels[keep], classes=table.classes)
    return ImageTable(labels=table.labels[keep], classes=table.classes, parquet_files=table.parquet_files,
                      parquet_file_ids=table.parquet_file_ids[keep], parquet_rows=table.parquet_rows[keep],
                      parquet_column=table.parquet_column)
