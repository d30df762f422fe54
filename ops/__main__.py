"""`python -m ops`: the pipeline driver's command line."""

from ops.cli import main

raise SystemExit(main())
