#!/usr/bin/env python3
"""An rlrig Checker written in Python with the standard library only.

It speaks rlrig's external-actor protocol `rlrig-actor/1` (docs/external-protocol.md): one JSON
object per line on stdin and stdout. It says hello as a checker, then answers each batch
`{"id", "role": "checker", "batch": [{"prompt", "image"}, ...]}` with
`{"id", "results": [CheckReport, ...]}`, or `{"id", "error"}` if the batch cannot be judged.
Diagnostics go to stderr, which rlrig forwards to its log. It exits when stdin closes.

How it judges an image against a prompt of the built-in world (a LAION-SG record whose items
have a shape as `label` and a colour as `attributes[0]`):

* the image arrives as `{"width", "height", "png_base64"}`; the PNG is decoded here (zlib and
  the five PNG row filters; 8-bit grey, grey+alpha, RGB or RGBA, not interlaced);
* a pixel belongs to a colour of the world's palette when it lies within RGB distance 60 of it;
* the pixels of each colour are cut into 8-connected components, and components under 4
  pixels (specks) are dropped;
* each prompt item takes a component of its colour; when several items share a colour, their
  shapes decide which takes which (a component's fill of its bounding box is about 1.0 for a
  square, 0.79 for a circle and 0.5 for a triangle). An item with no component left is missing;
* each prompt relation (`left of`, `right of`, `above`, `below`) is judged on the items'
  bounding boxes by GenEval's relative-position rule, as crates/rlrig-world/src/geometry.rs;
  it cannot be told when an item is missing or the predicate is unknown;
* the score is the fraction of items present and relations that hold; the reflection says in
  words what is wrong.

Run it under rlrig with the config `{"command": ["python3", "examples/external_checker.py"]}`.
"""

import base64
import json
import math
import os
import sys
import time
import traceback
import zlib

PROTOCOL = "rlrig-actor/1"

# The world's palette (crates/rlrig-world/src/vocab.rs).
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 220),
    "yellow": (235, 200, 40),
}
MATCH_DISTANCE = 60
MIN_PIXELS = 4
# Fill of its bounding box by each shape.
FILL = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}
# GenEval's POSITION_THRESHOLD.
POSITION_THRESHOLD = 0.1
RELATIONS = ("left of", "right of", "above", "below")


def send(obj):
    """Writes one protocol line and flushes it (rlrig waits for whole lines)."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


# --- PNG ---------------------------------------------------------------------------------


def decode_png(data):
    """Decodes a PNG into (width, height, rows), each row a list of (r, g, b) tuples."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG: bad signature")
    pos, header, idat = 8, None, []
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None or len(header) != 13:
        raise ValueError("PNG without a valid IHDR chunk")
    width = int.from_bytes(header[0:4], "big")
    height = int.from_bytes(header[4:8], "big")
    depth, colour_type, interlace = header[8], header[9], header[12]
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour_type)
    if depth != 8 or channels is None or interlace != 0:
        raise ValueError(
            f"unsupported PNG (bit depth {depth}, colour type {colour_type}, "
            f"interlace {interlace}): only 8-bit grey/RGB(A), not interlaced"
        )
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    if len(raw) != height * (stride + 1):
        raise ValueError(f"PNG data is {len(raw)} bytes, expected {height * (stride + 1)}")
    rows, prev = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        row = unfilter(raw[start], bytearray(raw[start + 1 : start + 1 + stride]), prev, channels)
        rows.append([to_rgb(row[x * channels : (x + 1) * channels]) for x in range(width)])
        prev = row
    return width, height, rows


def unfilter(kind, row, prev, bpp):
    """Undoes one PNG row filter in place (types 0 to 4) and returns the row."""
    if kind == 0:
        return row
    for i in range(len(row)):
        left = row[i - bpp] if i >= bpp else 0
        up = prev[i]
        if kind == 1:
            pred = left
        elif kind == 2:
            pred = up
        elif kind == 3:
            pred = (left + up) // 2
        elif kind == 4:
            upleft = prev[i - bpp] if i >= bpp else 0
            p = left + up - upleft
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
            pred = left if pa <= pb and pa <= pc else (up if pb <= pc else upleft)
        else:
            raise ValueError(f"unknown PNG filter type {kind}")
        row[i] = (row[i] + pred) & 0xFF
    return row


def to_rgb(px):
    """An (r, g, b) tuple from 1 to 4 channels (alpha is dropped)."""
    return (px[0], px[0], px[0]) if len(px) <= 2 else (px[0], px[1], px[2])


# --- finding items -----------------------------------------------------------------------


def components(width, height, rows, rgb):
    """The 8-connected components of pixels near `rgb`, as dicts with a box and a fill."""
    limit = MATCH_DISTANCE * MATCH_DISTANCE
    mask = [
        [sum((a - b) ** 2 for a, b in zip(px, rgb)) <= limit for px in row] for row in rows
    ]
    found = []
    for y0 in range(height):
        for x0 in range(width):
            if not mask[y0][x0]:
                continue
            mask[y0][x0] = False
            stack, pixels = [(x0, y0)], []
            while stack:
                x, y = stack.pop()
                pixels.append((x, y))
                for ny in (y - 1, y, y + 1):
                    for nx in (x - 1, x, x + 1):
                        if 0 <= nx < width and 0 <= ny < height and mask[ny][nx]:
                            mask[ny][nx] = False
                            stack.append((nx, ny))
            if len(pixels) < MIN_PIXELS:
                continue
            xs, ys = [p[0] for p in pixels], [p[1] for p in pixels]
            box = (min(xs), min(ys), max(xs) + 1, max(ys) + 1)  # ends exclusive
            area = (box[2] - box[0]) * (box[3] - box[1])
            found.append({"box": box, "size": len(pixels), "fill": len(pixels) / area})
    return found


def locate(items, width, height, rows):
    """The box of each item (by position in `items`), or None when it is missing."""
    boxes = [None] * len(items)
    by_colour = {}
    for i, item in enumerate(items):
        attrs = item.get("attributes") or []
        if attrs and attrs[0] in PALETTE:
            by_colour.setdefault(attrs[0], []).append(i)
    for colour, members in by_colour.items():
        comps = components(width, height, rows, PALETTE[colour])
        if not comps:
            continue
        biggest = max(c["size"] for c in comps)
        # Cheapest pairs first: the shape's fill mismatch, plus a penalty for small components.
        pairs = sorted(
            (abs(c["fill"] - FILL.get(items[i].get("label"), 0.75)) + 1 - c["size"] / biggest, i, k)
            for i in members
            for k, c in enumerate(comps)
        )
        taken = set()
        for _, i, k in pairs:
            if boxes[i] is None and k not in taken:
                boxes[i] = comps[k]["box"]
                taken.add(k)
    return boxes


def relative_position(a, b):
    """The relations that hold for box A relative to box B by GenEval's rule."""
    ca = ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2)
    cb = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    offset = (ca[0] - cb[0], ca[1] - cb[1])
    dims = ((a[2] - a[0]) + (b[2] - b[0]), (a[3] - a[1]) + (b[3] - b[1]))
    revised = [
        max(abs(offset[k]) - POSITION_THRESHOLD * dims[k], 0.0) * sign(offset[k]) for k in (0, 1)
    ]
    if all(abs(r) < 1e-3 for r in revised):
        return []
    norm = math.hypot(*offset)
    dx, dy = revised[0] / norm, revised[1] / norm
    out = []
    if dx < -0.5:
        out.append("left of")
    if dx > 0.5:
        out.append("right of")
    if dy < -0.5:
        out.append("above")
    if dy > 0.5:
        out.append("below")
    return out


def sign(v):
    return (v > 0) - (v < 0)


# --- judging -----------------------------------------------------------------------------


def node_text(item):
    return " ".join(list(item.get("attributes") or []) + [item["label"]])


def check(request):
    """A CheckReport for one {"prompt", "image"} request."""
    prompt, image = request["prompt"], request["image"]
    width, height, rows = decode_png(base64.b64decode(image["png_base64"], validate=True))
    if (width, height) != (image["width"], image["height"]):
        raise ValueError(
            f"image declares {image['width']}x{image['height']} but its PNG is {width}x{height}"
        )
    items, relations = prompt["items"], prompt.get("relations") or []
    boxes = locate(items, width, height, rows)
    index = {item["item_id"]: i for i, item in enumerate(items)}
    notes = []

    item_verdicts = []
    for item, box in zip(items, boxes):
        item_verdicts.append("present" if box else "missing")
        if box is None:
            attrs = item.get("attributes") or []
            if attrs and attrs[0] in PALETTE:
                notes.append(f"the {node_text(item)} is missing")
            else:
                notes.append(
                    f"the {node_text(item)} is missing: its colour is none of {', '.join(PALETTE)}"
                )

    relation_verdicts = []
    for rel in relations:
        a, b, word = index.get(rel["item1"]), index.get(rel["item2"]), rel["relation"]
        if a is None or b is None:
            relation_verdicts.append("cannot_tell")
            notes.append(f"relation {word!r} names an item that is not in the prompt")
            continue
        subject, obj = node_text(items[a]), node_text(items[b])
        if word not in RELATIONS:
            relation_verdicts.append("cannot_tell")
            notes.append(f"cannot judge {subject} {word} {obj}: only {', '.join(RELATIONS)} are known")
        elif boxes[a] is None or boxes[b] is None:
            relation_verdicts.append("cannot_tell")
            gone = subject if boxes[a] is None else obj
            notes.append(f"cannot tell whether the {subject} is {word} the {obj}: the {gone} is missing")
        else:
            actual = relative_position(boxes[a], boxes[b])
            if word in actual:
                relation_verdicts.append("holds")
                continue
            relation_verdicts.append("violated")
            where = " and ".join(actual) if actual else "at about the same place as"
            notes.append(f"the {subject} is {where} the {obj}, not {word} it")

    asked = len(item_verdicts) + len(relation_verdicts)
    met = item_verdicts.count("present") + relation_verdicts.count("holds")
    return {
        "items": item_verdicts,
        "relations": relation_verdicts,
        "score": met / asked if asked else 1.0,
        "reflection": "; ".join(notes) if notes else "every item is present and every relation holds",
    }


def main():
    # CHECKER_DELAY_MS (optional) makes every batch take that long, like a real model would;
    # the tests use it to keep work in flight.
    delay = float(os.environ.get("CHECKER_DELAY_MS", "0")) / 1000.0
    send({"protocol": PROTOCOL, "role": "checker"})
    for line in sys.stdin:
        if not line.strip():
            continue
        if delay > 0:
            time.sleep(delay)
        try:
            request = json.loads(line)
            batch_id = request["id"]
        except (ValueError, KeyError, TypeError) as e:
            # Without an id there is no way to answer; rlrig reports the exit and this message.
            print(f"external_checker: unreadable request line: {e}", file=sys.stderr)
            return 2
        try:
            if request.get("role") != "checker":
                raise ValueError(f"this process is a checker, asked for role {request.get('role')!r}")
            send({"id": batch_id, "results": [check(r) for r in request["batch"]]})
        except Exception as e:  # noqa: BLE001 - any failure is answered, never fatal
            traceback.print_exc(file=sys.stderr)
            send({"id": batch_id, "error": f"{type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
