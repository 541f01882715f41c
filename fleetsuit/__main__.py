"""``python -m fleetsuit``: the same as the ``fleetsuit`` command."""

import sys

from fleetsuit.cli import main

sys.exit(main())
