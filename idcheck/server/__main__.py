"""`python -m idcheck.server` is `idcheck serve`."""

from idcheck.server.app import main

raise SystemExit(main())
