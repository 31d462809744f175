"""Train one run: ``python jobs/train.py RUN_DIR [--stop-after N]`` (also under torchrun / srun)."""

import argparse
import logging
import sys
from pathlib import Path

from cover_hpc.train import train_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path, help="run folder holding config.json")
    parser.add_argument("--stop-after", type=int, default=None, help="checkpoint and stop after N steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = train_run(args.run_dir, stop_after=args.stop_after)
    return 0 if result.status == "finished" else 3


if __name__ == "__main__":
    sys.exit(main())
