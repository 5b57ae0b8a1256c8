"""Export a dataset for LLaMA-Factory SFT: `python utils/prepare_data_for_sft.py --dataset_dir DIR [--out FILE]`."""

import sys

from rewardmap.cli import main

if __name__ == "__main__":
    sys.exit(main(["sft-data", *sys.argv[1:]]))
