#!/usr/bin/env python3
"""A scriptable rlrig external actor for the tests of actors/external (protocol rlrig-actor/1).

Usage: echo_actor.py ROLE [MODE]. ROLE is the role it declares in its hello. It answers:

* diffuser: a 4+seed%4 by 3 image of colour (seed % 256, number of prompt items, 7);
* checker: every item present, every relation holds, score 1, reflection "fine";
* policy: edit prompt "fix: <reflection> [<$RLRIG_TEST_TAG>@<name of the working directory>]",
  two tokens, policy_version = seed;
* editor: the request's image, unchanged.

MODE makes it misbehave: --wrong-id, --too-few, --error-first (fails batch 1, then serves),
--crash (writes to stderr and exits 5 on the first request), --ignore-eof (keeps running
after stdin closes), --bad-image (results that are not base64), --bad-lengths (checker
reports without verdicts).
"""

import json
import os
import struct
import sys
import time
import zlib


def png(width, height, rgb):
    """A minimal 8-bit RGB PNG of one colour."""

    def chunk(kind, body):
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def answer(role, request, mode):
    if role == "diffuser":
        import base64

        w, seed = 4 + request["seed"] % 4, request["seed"]
        data = png(w, 3, (seed % 256, len(request["prompt"]["items"]), 7))
        b64 = "not base64!!" if mode == "--bad-image" else base64.b64encode(data).decode()
        return {"width": w, "height": 3, "png_base64": b64}
    if role == "checker":
        prompt = request["prompt"]
        if mode == "--bad-lengths":
            return {"items": [], "relations": [], "score": 1.0, "reflection": "fine"}
        return {
            "items": ["present"] * len(prompt["items"]),
            "relations": ["holds"] * len(prompt.get("relations", [])),
            "score": 1.0,
            "reflection": "fine",
        }
    if role == "policy":
        tag = os.environ.get("RLRIG_TEST_TAG", "")
        where = os.path.basename(os.getcwd())
        return {
            "edit_prompt": f"fix: {request['report']['reflection']} [{tag}@{where}]",
            "token_ids": [1, 2],
            "logprobs": [-0.5, -1.0],
            "policy_version": request["seed"],
        }
    if role == "editor":
        return request["image"]
    raise ValueError(f"unknown role {role}")


def main():
    role = sys.argv[1]
    mode = sys.argv[2] if len(sys.argv) > 2 else ""
    print(json.dumps({"protocol": "rlrig-actor/1", "role": role}), flush=True)
    for n, line in enumerate(sys.stdin, start=1):
        request = json.loads(line)
        if mode == "--crash":
            print("loading the model", file=sys.stderr, flush=True)
            print("boom: the model crashed", file=sys.stderr, flush=True)
            sys.exit(5)
        if mode == "--error-first" and n == 1:
            reply = {"id": request["id"], "error": "model not loaded"}
        else:
            results = [answer(role, r, mode) for r in request["batch"]]
            if mode == "--too-few":
                results = results[:-1]
            batch_id = request["id"] + (1 if mode == "--wrong-id" else 0)
            reply = {"id": batch_id, "results": results}
        print(json.dumps(reply), flush=True)
    if mode == "--ignore-eof":
        time.sleep(60)


if __name__ == "__main__":
    main()
