"""The real clocks, as they were when the plugin loaded.

While a ``freeze_time`` is active, freezegun swaps every module attribute that *is* one of the
real clock functions for its fake (it scans ``sys.modules``), and a frozen clock would hide
every stall and time every blocking call at 0 ms. A partial of the real function is not one of
them, so the plugin's modules keep these.
"""

from __future__ import annotations

import functools
import time

perf_counter = functools.partial(time.perf_counter)
monotonic = functools.partial(time.monotonic)
