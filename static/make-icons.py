#!/usr/bin/env python3
"""Draw printgate's app icons (static/icon-*.png) from the same shapes as static/icon.svg:
a blue rounded square, a white check mark and a white build plate. Standard library only
(zlib); 4x4 supersampling for smooth edges. Run from the repository root:
    python3 static/make-icons.py
"""
import struct
import zlib

BLUE = (0x09, 0x69, 0xDA)
WHITE = (0xFF, 0xFF, 0xFF)
CHECK = [(152, 212), (224, 284), (360, 148)]  # polyline, stroke width 48, round caps
PLATE = (96, 352, 416, 400, 24)  # x0, y0, x1, y1, corner radius
BG_RADIUS = 96


def in_round_rect(x, y, x0, y0, x1, y1, r):
    if x < x0 or x > x1 or y < y0 or y > y1:
        return False
    cx = min(max(x, x0 + r), x1 - r)
    cy = min(max(y, y0 + r), y1 - r)
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def near_segment(x, y, a, b, half):
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    t = max(0.0, min(1.0, ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy)))
    px, py = ax + t * dx, ay + t * dy
    return (x - px) ** 2 + (y - py) ** 2 <= half * half


def sample(x, y, full_bleed):
    """Colour and coverage of one point in the 512x512 design space."""
    if not full_bleed and not in_round_rect(x, y, 0, 0, 512, 512, BG_RADIUS):
        return None
    if in_round_rect(x, y, *PLATE):
        return WHITE
    if any(near_segment(x, y, CHECK[i], CHECK[i + 1], 24) for i in range(len(CHECK) - 1)):
        return WHITE
    return BLUE


def render(size, full_bleed):
    n = 4
    rows = []
    scale = 512.0 / size
    for py in range(size):
        row = bytearray([0])
        for px in range(size):
            r = g = b = a = 0
            for sy in range(n):
                for sx in range(n):
                    c = sample((px + (sx + 0.5) / n) * scale, (py + (sy + 0.5) / n) * scale, full_bleed)
                    if c:
                        r += c[0]; g += c[1]; b += c[2]; a += 1
            if a:
                row += bytes((r // a, g // a, b // a, 255 * a // (n * n)))
            else:
                row += bytes(4)
        rows.append(bytes(row))
    return rows


def png(size, rows):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b""))


for size, full_bleed, name in [(192, False, "icon-192.png"), (512, False, "icon-512.png"),
                               (180, True, "apple-touch-icon.png")]:
    with open("static/" + name, "wb") as f:
        f.write(png(size, render(size, full_bleed)))
