"""`python -m bench [--quick | --full] [--out FILE] [--litellm | --no-litellm] [--only W1,W3]`."""

import sys

from bench.runner import main

sys.exit(main())
