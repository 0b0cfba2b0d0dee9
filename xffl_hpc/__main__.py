"""``python -m xffl_hpc`` runs the ``xffl-hpc`` command line."""

from xffl_hpc.cli import main

raise SystemExit(main())
