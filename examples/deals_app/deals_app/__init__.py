"""deals_app: the reference deal collector built on tokenbucket.

It collects Keepa-style deals and price histories into SQLite with several jobs
that share one metered quota, and ships a Keepa-like simulator so it runs on a
fresh machine with no account. ``deals-app --help`` lists the commands.
"""

from __future__ import annotations

__version__ = "0.1.0"
