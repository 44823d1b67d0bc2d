"""``python -m kdad.data.embedded``: generate or verify the embedded benchmark (see kdad.data.embedded.benchmark)."""

import sys

from kdad.data.embedded.benchmark import main

sys.exit(main())
