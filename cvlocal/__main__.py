"""``python -m cvlocal`` runs the same CLI as the ``cvlocal`` console script."""
import sys

from cvlocal.cli import main

sys.exit(main())
