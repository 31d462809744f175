"""Write the experiment report: ``python jobs/report.py EXPERIMENT_DIR``."""

import argparse
import sys
from pathlib import Path

from cover_hpc.stages.report import build_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("experiment_dir", type=Path, help="experiment folder (<output_dir>/<name>)")
    args = parser.parse_args()
    print(f"report: {build_report(args.experiment_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
