"""``python -m convatlas``: the command line."""

from convatlas.cli import main

raise SystemExit(main())
