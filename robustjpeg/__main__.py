"""Allow `python -m robustjpeg` (and `torchrun -m robustjpeg`)."""

from robustjpeg.cli import main

raise SystemExit(main())
