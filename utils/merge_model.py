"""Merge a checkpoint or LoRA adapter into a plain HF model: `python utils/merge_model.py CKPT_DIR OUT_DIR [...]`."""

import argparse
import logging
import sys

from rewardmap.models import merge

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=merge.__doc__.splitlines()[0])
    merge.add_arguments(parser)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    sys.exit(merge.run(parser.parse_args()))
