#!/usr/bin/env python3
"""Per edit type (the edit prompt's first word): how many edits a run made and the share that
raised the Checker's score over its previous check; for swaps also how many followed a
reflection that names the swapped pair's relation reversed (`the a is right of the b, not left
of it`), and how many of either kind raised the score. Reads a run's
`trajectories/*/chain.json` (written by `rlrig run`); docs/RESULTS.md's "of the N `add` edits …
raised the Checker's score" and "swaps that followed a reversed relation" lines.

    python3 scripts/edit_gains.py runs/infer-500
"""
import collections
import glob
import json
import re
import sys

INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
SENTENCE = re.compile(r"the (\w+ \w+) is (.+?) the (\w+ \w+), not (.+?) it")
SWAP = re.compile(r"swap the (\w+ \w+) and the (\w+ \w+)$")


def reversed_in(reflection: str, a: str, b: str) -> bool:
    """Whether the reflection says the relation asked between a and b holds the other way."""
    for sentence in reflection.split(". "):
        m = SENTENCE.match(sentence.strip())
        if m and {m.group(1), m.group(3)} == {a, b}:
            return INVERSE[m.group(4)] in m.group(2)
    return False


def main(run: str) -> None:
    made, raised = collections.Counter(), collections.Counter()
    for path in sorted(glob.glob(f"{run}/trajectories/*/chain.json")):
        with open(path) as f:
            chain = json.load(f)
        last, reflection, pending = None, "", None
        for step in chain["steps"]:
            if step["role"] == "checker":
                if pending is not None and last is not None:
                    for kind in pending:
                        made[kind] += 1
                        raised[kind] += step["score"] > last
                    pending = None
                last, reflection = step["score"], step.get("reflection", "")
            elif step["role"] == "policy":
                prompt = step["edit_prompt"]
                pending = [prompt.split()[0]]
                m = SWAP.match(prompt)
                if m:
                    rev = reversed_in(reflection, m.group(1), m.group(2))
                    pending.append("swap, reversed" if rev else "swap, other")
    if not made:
        sys.exit(f"{run}: no edits found under trajectories/*/chain.json")
    for kind in sorted(made):
        print(f"{kind:15} {made[kind]:6} edits  {raised[kind] / made[kind]:.3f} raised the score")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
