"""Sources (ImageFolder, Parquet) and the batch mapper: labels kept, bad files skipped and counted."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rob_ray.data import CropPolicy, DataSourceError, MultiCropMapper, SampleSchedule, scan_images


def test_imagefolder_labels_and_flat_folder(small_folder, tmp_path):
    table = scan_images(small_folder)
    assert len(table) == 48 and table.classes == sorted(p.name for p in small_folder.iterdir())
    assert np.bincount(table.labels).tolist() == [12] * 4
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in list(small_folder.rglob("*.JPEG"))[:5]:
        (flat / p.name).write_bytes(p.read_bytes())
    t2 = scan_images(flat)
    assert len(t2) == 5 and (t2.labels == -1).all()


def test_parquet_bytes_and_paths_read_back_identically(small_folder, tmp_path):
    files = sorted(small_folder.rglob("*.JPEG"))[:6]
    pq.write_table(pa.table({"image": [f.read_bytes() for f in files], "y": list(range(6))}), tmp_path / "b.parquet")
    pq.write_table(pa.table({"path": [str(f) for f in files]}), tmp_path / "p.parquet")
    tb = scan_images(tmp_path / "b.parquet", parquet_label_column="y")
    tp = scan_images(tmp_path / "p.parquet", fmt="parquet", parquet_image_column="path")
    assert tb.labels.tolist() == list(range(6))
    assert [tb.read(i) for i in range(6)] == [f.read_bytes() for f in files] == [tp.read(i) for i in range(6)]


def test_source_errors_are_one_line(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        scan_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="no images found"):
        scan_images(tmp_path / "empty")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "x.parquet")
    with pytest.raises(DataSourceError, match="no column 'image'"):
        scan_images(tmp_path / "x.parquet")


def test_max_images_keeps_classes(small_folder):
    table = scan_images(small_folder, max_images=8)
    assert len(table) == 8 and set(table.labels.tolist()) == {0, 1, 2, 3}


def test_corrupt_and_zero_byte_files_are_skipped_and_counted(small_folder):
    cls = sorted(small_folder.iterdir())[0]
    (cls / "zero.jpg").write_bytes(b"")
    (cls / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    good = sorted(cls.glob("*.JPEG"))[0].read_bytes()
    (cls / "truncated.jpg").write_bytes(good[: len(good) // 4])
    table = scan_images(small_folder)
    schedule = SampleSchedule(len(table), world_size=1, batch_size=len(table), epochs=1)
    bad = {i for i, p in enumerate(table.paths) if p.endswith(("zero.jpg", "corrupt.jpg", "truncated.jpg"))}
    for crops_on in ("data_actors", "worker"):
        policy = CropPolicy(global_size=32, local_size=16, num_local=2, crops_on=crops_on, image_size=128)
        batch = next(MultiCropMapper(table, policy, schedule, rank=0).iter_local(0, 1))
        assert int((~batch["valid"]).sum()) == 3
        assert {int(i) for i, ok in zip(batch["image_index"], batch["valid"]) if not ok} == bad
        if crops_on == "data_actors":
            assert batch["global"].shape == (51, 2, 3, 32, 32) and batch["local"].shape == (51, 2, 3, 16, 16)
            assert batch["global"][~batch["valid"]].max() == 0
        else:
            assert batch["image"].shape == (51, 3, 128, 128) and batch["image"][~batch["valid"]].max() == 0
