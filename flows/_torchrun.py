"""`torchrun` for `auralsam2 train --nproc-per-node N` (`flows.train._launch_torchrun`): the same
launcher, but when a process stops on a user error (it wrote its `error.rank<r>.txt`, which the
caller turns into one `error:` line) the launcher exits with status 1 and no traceback or error
log of its own. `--debug` / AURALSAM2_DEBUG=1 keeps them."""

from __future__ import annotations

import logging
import os
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    debug = os.environ.get("AURALSAM2_DEBUG", "") not in ("", "0")
    if not debug:
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError:
        if debug:
            raise
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
