"""Row mode against the plain ``multiprocessing.Pool`` script alone: ``row_mode_peers.py`` with
``--only batchserve pool``.

The job, the baseline and the protocol (batchserve cold and after a small batch, sides
alternating in each repetition, medians) are ``row_mode_peers.py``'s; this command is kept for
the runs that want the plain script alone, without starting Ray or Celery. Every option of
``row_mode_peers.py`` applies.

    .venv/bin/python bench/row_mode.py [--records 1000000] [--parallel 2] [--repeat 3]
"""

from __future__ import annotations

import sys

from row_mode_peers import main

if __name__ == "__main__":
    sys.exit(main(["--only", "batchserve", "pool", *sys.argv[1:]]))
