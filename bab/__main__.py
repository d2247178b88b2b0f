"""``python -m bab`` runs the command line."""

from bab.cli import main

raise SystemExit(main())
