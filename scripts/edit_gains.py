#!/usr/bin/env python3
"""Per edit type (the edit prompt's first word): how many edits a run made and the share that
raised the Checker's score over its previous check. Reads a run's `trajectories/*/chain.json`
(written by `rlrig run`); docs/RESULTS.md's "of the N `add` edits … raised the Checker's score" lines.

    python3 scripts/edit_gains.py runs/infer-500
"""
import collections
import glob
import json
import sys


def main(run: str) -> None:
    made, raised = collections.Counter(), collections.Counter()
    for path in sorted(glob.glob(f"{run}/trajectories/*/chain.json")):
        with open(path) as f:
            chain = json.load(f)
        last, pending = None, None
        for step in chain["steps"]:
            if step["role"] == "checker":
                if pending is not None and last is not None:
                    made[pending] += 1
                    raised[pending] += step["score"] > last
                    pending = None
                last = step["score"]
            elif step["role"] == "policy":
                pending = step["edit_prompt"].split()[0]
    if not made:
        sys.exit(f"{run}: no edits found under trajectories/*/chain.json")
    for kind in sorted(made):
        print(f"{kind:10} {made[kind]:6} edits  {raised[kind] / made[kind]:.3f} raised the score")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
