"""Export a dataset for LLaMA-Factory SFT: `python utils/prepare_data_for_sft.py --dataset_dir DIR [--out FILE]`."""

import sys

from rewardmap.data.sft import main

if __name__ == "__main__":
    sys.exit(main())
