from reproducible._cli import main

raise SystemExit(main())
