"""Entry point: `python experiments/run.py [train|demo] [--config X] [--dry-run] [key=value ...]`.

Also the `ray job submit --working-dir . -- python experiments/run.py ...` entrypoint.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a fresh clone / job working dir

from rob_ray.cli import main

if __name__ == "__main__":
    sys.exit(main())
