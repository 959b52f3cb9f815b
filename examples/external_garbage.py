#!/usr/bin/env python3
"""A deliberately broken rlrig external actor, for the tests of actors/external.

It says a valid `rlrig-actor/1` hello as a checker, then answers every request line with
`hello world`, which is not a reply: rlrig must report a malformed reply that names the actor.
"""

import json
import sys

print(json.dumps({"protocol": "rlrig-actor/1", "role": "checker"}), flush=True)
for line in sys.stdin:
    print("hello world", flush=True)
