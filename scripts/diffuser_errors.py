#!/usr/bin/env python3
"""What goes wrong with the objects the Diffuser draws: each object a prompt names is classed
as drawn right, a binding error (its shape and its colour are both in the image, on different
objects), a wrong colour, a wrong shape, or neither. Then each image: exactly right (by the
number of objects its prompt names), the right shapes and colours wrongly paired, extra
objects, the right number with something else wrong, or too few. Reads a `flows/diffuser-eval.toml` run's
round-0 images and prompts and parses the images with `rlrig world parse` (the oracle).

    python3 scripts/diffuser_errors.py runs/diffuser-eval [path/to/rlrig]
"""
import collections
import glob
import json
import os
import subprocess
import sys


def main(run: str, rlrig: str) -> None:
    dirs = sorted(glob.glob(f"{run}/trajectories/*/"))
    images = [os.path.join(d, "step00-round0-diffuser.png") for d in dirs]
    if not images:
        sys.exit(f"{run}: no trajectories/*/step00-round0-diffuser.png")
    parsed = subprocess.run(
        [rlrig, "world", "parse", *images], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    classes, named, unnamed, right_count = collections.Counter(), 0, 0, 0
    per_image, exact, prompts_by_size = collections.Counter(), collections.Counter(), collections.Counter()
    for d, line in zip(dirs, parsed):
        drawn = [(it["label"], it["attributes"][0]) for it in json.loads(line)["items"]]
        with open(os.path.join(d, "chain.json")) as f:
            items = json.load(f)["scene_graph"]["items"]
        wanted = [(it["label"], it["attributes"][0]) for it in items]
        shapes = {s for s, _ in drawn}
        colours = {c for _, c in drawn}
        right_count += len(drawn) == len(wanted)
        prompts_by_size[len(wanted)] += 1
        if sorted(drawn) == sorted(wanted):
            exact[len(wanted)] += 1
            per_image["exactly right"] += 1
        elif sorted(s for s, _ in drawn) == sorted(s for s, _ in wanted) and sorted(
            c for _, c in drawn
        ) == sorted(c for _, c in wanted):
            per_image["the right shapes and colours, wrongly paired"] += 1
        elif len(drawn) > len(wanted):
            per_image["extra objects"] += 1
        elif len(drawn) == len(wanted):
            per_image["the right number, something else wrong"] += 1
        else:
            per_image["too few objects"] += 1
        for shape, colour in wanted:
            named += 1
            if (shape, colour) in drawn:
                classes["right"] += 1
            elif shape in shapes and colour in colours:
                classes["binding: shape and colour drawn on different objects"] += 1
            elif shape in shapes:
                classes["shape drawn, its colour nowhere"] += 1
            elif colour in colours:
                classes["colour drawn, its shape nowhere"] += 1
            else:
                classes["neither drawn"] += 1
        unnamed += sum(1 for o in drawn if o not in wanted)
    print(f"{named} objects named by {len(dirs)} prompts")
    for kind, n in classes.most_common():
        print(f"  {kind:55} {n:6}  {n / named:.3f}")
    print(f"objects drawn that no prompt item names: {unnamed}")
    print(f"images with as many objects as the prompt names: {right_count}/{len(dirs)}")
    print("per image:")
    for kind, n in per_image.most_common():
        print(f"  {kind:55} {n:6}  {n / len(dirs):.3f}")
    for size in sorted(prompts_by_size):
        n = prompts_by_size[size]
        print(f"  exactly right, prompts naming {size} objects: {exact[size]}/{n} ({exact[size] / n:.2f})")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else "target/release/rlrig")
