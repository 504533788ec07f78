"""``python -m mooncake.sim [sweep] ...``: the ``mooncake sim`` command stand-alone."""

from mooncake.sim.cli import main

raise SystemExit(main())
