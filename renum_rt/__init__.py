"""renum-rt: the real-time gateway of the Renum platform.

The package is split the way the ``websockets`` library splits itself: a pure core
(``protocol``, ``channels``, ``limits``, ``session``, ``auth``, ``config``) that knows
nothing about sockets, storage engines behind one interface (``engines``), and thin
Tornado adapters (``handlers``, ``app``) that move bytes between the two.
"""

__version__ = "1.0.0"
