"""``python -m voxwire_client`` (also the ``voxwire`` console script)."""

import sys

from voxwire_client._cli import main

if __name__ == "__main__":
    sys.exit(main())
