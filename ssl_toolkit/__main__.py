"""``python -m ssl_toolkit …`` runs the ``ssl-toolkit`` command (useful where the venv's bin is not on PATH)."""
from ssl_toolkit.cli import main

raise SystemExit(main())
