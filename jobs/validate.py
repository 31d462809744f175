"""Validate one trained run: ``python jobs/validate.py RUN_DIR``."""

import argparse
import logging
import sys
from pathlib import Path

from cover_hpc.stages.validate import validate_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path, help="run folder holding config.json and train/")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = validate_run(args.run_dir)
    print(f"CLIP score {result['scores']['lora']['clip_score']:.3f} over {result['num_prompts']} prompts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
