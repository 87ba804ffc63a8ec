from raymmrec.cli import main

raise SystemExit(main())
