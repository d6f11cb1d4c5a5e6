"""`python -m nas ...`: the `nas` command without its installed entry point."""

from nas.cli import main

raise SystemExit(main())
