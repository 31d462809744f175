"""Train one run: ``python jobs/train.py RUN_DIR [--stop-after N]`` (also under torchrun / srun).

Exits 0 when training finished or stopped on request (checkpointed; run again to resume), and
non-zero on failure.
"""

import argparse
import logging
import sys
from pathlib import Path

from cover_hpc.stages.train import train_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path, help="run folder holding config.json")
    parser.add_argument("--stop-after", type=int, default=None, help="checkpoint and stop after N steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = train_run(args.run_dir, stop_after=args.stop_after)
    # "stopped" is a clean exit too: the checkpoint is written and the next start resumes from it.
    print(f"training {result.status} at step {result.steps}/{result.total_steps}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
