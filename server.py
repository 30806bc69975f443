"""Start renum-rt from a checkout: ``python server.py [flags]``, the same as ``renum-rt``.

The command lives in ``renum_rt/cli.py`` so that installs get it as the ``renum-rt``
script and ``python -m renum_rt`` without a top-level ``server`` module; this launcher
stays for the checkout, where the README, the benchmarks and the tests start it.
"""

import sys

from renum_rt.cli import main

if __name__ == "__main__":
    sys.exit(main())
