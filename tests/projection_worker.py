"""A real process for the projection tests.

``write STORE N``: spawn N small runs on the store, one after the other, print DONE.
``follow STORE``: attach the stored projection ``positions`` and spawn runs until it is
SIGKILLed, printing ``AT position`` after each catch-up.
"""

from __future__ import annotations

import sys

import foldloop as fl
from tests.projection_shared import Positions, agent


def write(store: str, n: int) -> None:
    with fl.Runtime.open(store) as rt:
        for i in range(n):
            rt.spawn(agent(), f"run {i}").wait(timeout=30)
    print("DONE", flush=True)


def follow(store: str) -> None:
    with fl.Runtime.open(store) as rt:
        handle = rt.attach(Positions(), checkpoint_every=0.0)
        i = 0
        while True:
            rt.spawn(agent(), f"run {i}").wait(timeout=30)
            print(f"AT {handle.catch_up(timeout=30)}", flush=True)
            i += 1


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], int(sys.argv[3]))
    else:
        follow(sys.argv[2])
