"""`python -m scones_workflow ...`: see src/cli.py."""
from scones_workflow.src.cli import main

raise SystemExit(main())
