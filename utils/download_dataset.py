"""Download ReasonMap-Train / -Plus / ReasonMap into data/: `python utils/download_dataset.py [--dataset all]`."""

import sys

from rewardmap.cli import main

if __name__ == "__main__":
    sys.exit(main(["download", *sys.argv[1:]]))
