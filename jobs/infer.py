"""Run one batch-inference shard: ``python jobs/infer.py RUN_DIR SHARD``."""

import argparse
import logging
import sys
from pathlib import Path

from cover_hpc.stages.infer import infer_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path, help="run folder holding config.json and train/")
    parser.add_argument("shard", type=int, help="shard index, 0 .. infer.shards - 1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = infer_run(args.run_dir, args.shard)
    print(f"shard {result.shard}/{result.shards}: {result.generated} generated, {result.skipped} already done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
