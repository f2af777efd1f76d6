from cnetd.cli import main

raise SystemExit(main())
