"""
A load generator worker process: C{python -m bench.loadgen FD WORKER_ID
uvloop|asyncio}, started by the coordinator with FD its end of a
socketpair.
"""

import sys
from .worker import main

main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "uvloop")
