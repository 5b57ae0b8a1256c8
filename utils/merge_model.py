"""Merge a checkpoint or LoRA adapter into a plain HF model: `python utils/merge_model.py CKPT_DIR OUT_DIR [...]`."""

import sys

from rewardmap.cli import main

if __name__ == "__main__":
    sys.exit(main(["merge", *sys.argv[1:]]))
