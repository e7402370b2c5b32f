"""``python -m jzad.serve``: the inspection service (see ``jzad.serve``)."""

import sys

from jzad.serve.cli import main

if __name__ == "__main__":
    sys.exit(main())
