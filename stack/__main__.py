"""`python -m stack` is `obsgen`."""

import sys

from stack.cli import main

sys.exit(main())
