"""The frozen app's entry point: the same `main` as the installed `remotellm-connector`."""

import sys

from connector_app.cli import main

if __name__ == "__main__":
    sys.exit(main())
