"""``python -m app.tls make-cert ...``: see `app.tls.main`."""

import sys

from app.tls import main

if __name__ == "__main__":
    sys.exit(main())
