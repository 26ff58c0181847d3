from sparkvision.cli import main

raise SystemExit(main())
