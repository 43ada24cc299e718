"""Thin wrapper: ``python training/train.py --config paper --data DIR -o RUN``.

Same options as ``napari-vertebra train`` (``--config`` takes a file or a shipped
configuration's name: paper, smoke, synth-r50); works under ``torchrun`` for several GPUs.
"""

import sys

from napari_vertebra.model.train import get_args_parser, main

if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
