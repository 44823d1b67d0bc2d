"""``make bench`` = ``python -m bench [key=value ...]``: measure every method, print the tables, write JSON.

Settings live in ``bench/conf/bench.yaml`` (``bench.device``, ``bench.methods``, ``bench.image_size``, ...) and
are overridden on the command line in OmegaConf's dot-list syntax, e.g. ``bench.device=cuda``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bench.runner import load_settings, run_bench


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(list(sys.argv[1:] if argv is None else argv))
    run_bench(settings)


if __name__ == "__main__":
    main()
