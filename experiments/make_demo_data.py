"""Rebuild experiments/demo_data/ from an Imagenette tree (how the shipped subset was made).

    python experiments/make_demo_data.py --src ../shared/data/imagenette2-224 --train 100 --val 30

Takes the first N files per class in sorted order from each split, converts to RGB, resizes
to 112x112 (bicubic) and re-encodes as JPEG quality 85.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default="../shared/data/imagenette2-224")
    ap.add_argument("--dst", default="experiments/demo_data")
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--val", type=int, default=30)
    ap.add_argument("--size", type=int, default=112)
    args = ap.parse_args()
    for split, n in (("train", args.train), ("val", args.val)):
        for cls in sorted(p for p in (Path(args.src) / split).iterdir() if p.is_dir()):
            out = Path(args.dst) / split / cls.name
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.iterdir())[:n]:
                img = Image.open(f).convert("RGB").resize((args.size, args.size), Image.BICUBIC)
                img.save(out / f.name, quality=85)


if __name__ == "__main__":
    main()
