"""Entry script of the PyInstaller binary (packaging/cnet-agent.spec): `cnet-agent ...`."""

from cnetd.cli import main

raise SystemExit(main())
