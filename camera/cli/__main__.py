"""``python -m camera.cli``: the same as the ``peercam`` command."""

import sys

from camera.cli import main

sys.exit(main())
