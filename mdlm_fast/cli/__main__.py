"""``python -m mdlm_fast.cli ...`` == ``mdlm-fast ...`` (the form ``torchrun`` needs)."""

import sys

from mdlm_fast.cli.app import main

sys.exit(main())
