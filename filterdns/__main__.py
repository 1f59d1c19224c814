from filterdns.cli import main

raise SystemExit(main())
