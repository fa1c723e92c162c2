"""Where a run's files live: a local folder (or NFS mount), or a URI that pyarrow opens
(`s3://bucket/runs`, `gs://bucket/runs`, `file:///shared/runs`, ...).

Ray Train writes its checkpoints to `storage_path/name` itself, through the same pyarrow
filesystems. rob_ray's own files (the driver's `config.yaml`, rank 0's `metrics.jsonl` and
TensorBoard events, the k-NN report, local-mode checkpoints) are written by plain Python file
code, so for a URI they are written into a local staging folder and mirrored to the storage:
after every checkpoint and at the end of a run. A resumed run first pulls them back, so its
metrics continue the same file. For a plain path the staging folder *is* the run folder and
nothing is copied. No Ray here: the mirror is pyarrow only.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from rob_ray.errors import ConfigError

__all__ = ["RunStorage", "is_uri"]

# Ray Train's own checkpoint folders: Ray restores them itself; pulling them would copy every
# checkpoint of a run to each driver.
_RAY_CHECKPOINT = re.compile(r"^checkpoint_step_\d+(/|$)")


def is_uri(path: str) -> bool:
    """True for `scheme://...` (s3, gs, file, hdfs, ...); a Windows drive (`C:\\`) is a path."""
    return "://" in path and len(urlparse(path).scheme) > 1


class RunStorage:
    """The folder `storage_path/name` of one run, plus a local folder mirrored into it.

    Args:
        storage_path: a local path (made absolute here, so workers with another cwd agree)
            or a URI pyarrow understands.
        name: the run name (`run.name`).
    """

    def __init__(self, storage_path: str, name: str) -> None:
        self.name = name
        self.is_remote = is_uri(storage_path)
        self._local: Path | None = None
        self._synced: dict[str, tuple[int, int]] = {}  # rel path -> (size, mtime_ns) last mirrored
        if self.is_remote:
            try:
                self.filesystem, base = pafs.FileSystem.from_uri(storage_path)
            except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise ConfigError(f"config error: run.storage_path = {storage_path!r} is not a usable URI "
                                  f"({str(exc).splitlines()[0]}); use a local path or s3://, gs://, file://") from None
            self.storage_path = storage_path.rstrip("/")
            self.fs_path = f"{base.rstrip('/')}/{name}"
        else:
            self.filesystem = None
            self.storage_path = str(Path(storage_path).expanduser().resolve())
            self.fs_path = str(Path(self.storage_path) / name)
            self._local = Path(self.fs_path)

    @property
    def uri(self) -> str:
        """Where the run lives, for messages (`s3://bucket/runs/demo` or `/abs/runs/demo`)."""
        return f"{self.storage_path}/{self.name}"

    @property
    def local_dir(self) -> Path:
        """The folder to write into: the run folder itself, or (URI) a private staging folder."""
        if self._local is None:
            self._local = Path(tempfile.mkdtemp(prefix=f"rob_ray_{self.name}_"))
        self._local.mkdir(parents=True, exist_ok=True)
        return self._local

    def _remote_files(self) -> dict[str, pafs.FileInfo]:
        sel = pafs.FileSelector(self.fs_path, recursive=True, allow_not_found=True)
        prefix = self.fs_path.rstrip("/") + "/"
        return {i.path[len(prefix):]: i for i in self.filesystem.get_file_info(sel)
                if i.type == pafs.FileType.File and i.path.startswith(prefix)}

    def _copy(self, src: str, src_fs: pafs.FileSystem, dst: str, dst_fs: pafs.FileSystem) -> None:
        dst_fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)

    def pull(self) -> list[str]:
        """Copy the run's files (except Ray Train checkpoints) into `local_dir`; returns their paths."""
        if not self.is_remote:
            return []
        local_fs, got = pafs.LocalFileSystem(), []
        for rel in sorted(self._remote_files()):
            if _RAY_CHECKPOINT.match(rel):
                continue
            dst = self.local_dir / rel
            self._copy(f"{self.fs_path}/{rel}", self.filesystem, str(dst), local_fs)
            self._synced[rel] = _stamp(dst)
            got.append(rel)
        return got

    def push(self) -> list[str]:
        """Mirror `local_dir` into the storage: upload new/changed files, delete the ones this
        object mirrored earlier that are gone locally (rotated checkpoints). Returns uploads."""
        if not self.is_remote or self._local is None:
            return []
        local_fs, sent, seen = pafs.LocalFileSystem(), [], set()
        for f in sorted(p for p in self._local.rglob("*") if p.is_file()):
            rel = f.relative_to(self._local).as_posix()
            if rel.endswith(".tmp") or "/.tmp_" in f"/{rel}" or _RAY_CHECKPOINT.match(rel):
                continue  # half-written files (renamed when complete); Ray's checkpoints are Ray's
            seen.add(rel)
            stamp = _stamp(f)
            if self._synced.get(rel) != stamp:
                self._copy(str(f), local_fs, f"{self.fs_path}/{rel}", self.filesystem)
                self._synced[rel] = stamp
                sent.append(rel)
        gone = sorted(set(self._synced) - seen)
        for rel in gone:
            self.filesystem.delete_file(f"{self.fs_path}/{rel}")
            del self._synced[rel]
        # Folders left empty (a rotated checkpoint): deepest first; object stores have none to remove.
        parents = {p.as_posix() for rel in gone for p in Path(rel).parents if p.as_posix() != "."}
        for rel in sorted(parents, key=lambda p: -p.count("/")):
            folder = f"{self.fs_path}/{rel}"
            info = self.filesystem.get_file_info(folder)
            if info.type == pafs.FileType.Directory and not self.filesystem.get_file_info(
                    pafs.FileSelector(folder, allow_not_found=True)):
                self.filesystem.delete_dir(folder)
        return sent

    def close(self) -> None:
        """URI runs: mirror what is left, then delete the private staging folder (only after that
        upload succeeded: a failed push raises and the folder stays). A plain path is the run: kept."""
        if not self.is_remote or self._local is None:
            return
        self.push()
        self.discard_staging()

    def discard_staging(self) -> None:
        """Delete the private staging folder of a URI run without uploading (a rank that writes nothing).
        Never touches a plain path's run folder."""
        if self.is_remote and self._local is not None:
            shutil.rmtree(self._local, ignore_errors=True)
            self._local, self._synced = None, {}

    def download_latest_checkpoint(self) -> Path | None:
        """Fetch the newest Ray Train checkpoint (`checkpoint_step_N/`) into `local_dir`."""
        if not self.is_remote:
            return None
        files = self._remote_files()
        steps = {m.group(0) for rel in files if (m := re.match(r"^checkpoint_step_\d+", rel))
                 and rel == f"{m.group(0)}/state.pt"}
        if not steps:
            return None
        newest = max(steps, key=lambda s: int(s.rsplit("_", 1)[1]))
        local_fs = pafs.LocalFileSystem()
        for rel in files:
            if rel.startswith(newest + "/"):
                self._copy(f"{self.fs_path}/{rel}", self.filesystem, str(self.local_dir / rel), local_fs)
        return self.local_dir / newest


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns
