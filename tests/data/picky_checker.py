#!/usr/bin/env python3
"""A Checker that fails on some prompts, for the tests of exit codes and failed trajectories.

It is examples/external_checker.py, except that every prompt with an item of the colour
$PICKY_COLOUR (default yellow) is answered with an error, so those trajectories fail after
their retries while the others are done. Run it with `batch = 1` so that one failing prompt
does not fail the others of its batch.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples"))

import external_checker  # noqa: E402

COLOUR = os.environ.get("PICKY_COLOUR", "yellow")
judge = external_checker.check


def check(request):
    for item in request["prompt"]["items"]:
        if COLOUR in (item.get("attributes") or []):
            raise ValueError(f"this checker refuses {COLOUR} items")
    return judge(request)


external_checker.check = check

if __name__ == "__main__":
    sys.exit(external_checker.main())
