"""``python -m launcher``: the same as the ``fleetsuit`` command."""

import sys

from launcher.main import main

sys.exit(main())
