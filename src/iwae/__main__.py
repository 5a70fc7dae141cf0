"""``python -m iwae``: the ``iwae`` command (also ``torchrun ... -m iwae evaluate``)."""

import sys

from iwae.cli import main

sys.exit(main())
