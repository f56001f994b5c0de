"""A driver that stays connected until released: `ray submit` runs it on the head.

Prints ``holding`` once connected, then waits until the file given as its
argument exists on the head (the test writes it through the machine's
/proc/<pid>/root), then disconnects. While it waits, the cluster has a
connected driver: busy for autostop, however long that is.
"""

import os
import sys
import time

import ray

release = sys.argv[1]
ray.init()  # the cluster on this head (its address file), with the node's token
print(f"holding until {release} exists", flush=True)
while not os.path.exists(release):
    time.sleep(1)
print("released", flush=True)
ray.shutdown()
