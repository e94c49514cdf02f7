"""``python -m app.models``: see `app.models.main`."""

import sys

from app.models import main

if __name__ == "__main__":
    sys.exit(main())
