#!/usr/bin/env python3
"""The example's training curves (--curves PREFIX writes PREFIX.svg) as a browser shows them.

Writes the SVG with tests/curves_fixture (the example's own writer, examples/curves.c), opens
it in Debian's headless Chromium and checks:
  - the page Chromium parsed (--dump-dom) is the SVG, not an XML error page, with the title
    intact, the axes (frame, five tick labels on each side, epoch labels, the axis names),
    the three series (training loss, broken around its NaN epoch; training and test
    accuracy) and the legend;
  - the picture Chromium drew (--screenshot) has each series' colour inside the plot area
    and the axes' grey frame.
Exits 77 (meson's "skipped") with a message when Chromium is not installed; Debian's package
is `chromium` (large, so scripts/setup.sh does not install it).

Usage: curves_in_browser.py CURVES_FIXTURE
"""
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zlib

SVG = "{http://www.w3.org/2000/svg}"
# Must match examples/curves.c.
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 760, 440, 80, 80, 50, 70
COLORS = {"series-train-loss": (0xC0, 0x39, 0x2B), "series-train-acc": (0x7F, 0xB3, 0xD5),
          "series-test-acc": (0x24, 0x71, 0xA3)}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--force-device-scale-factor=1"]


def fail(msg):
    print("curves_in_browser: FAIL: " + msg)
    sys.exit(1)


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def run_browser(browser, work, args):
    """Runs the browser with a fresh profile; returns its stdout."""
    profile = tempfile.mkdtemp(prefix="profile-", dir=work)
    cmd = [browser] + FLAGS + ["--user-data-dir=" + profile] + args
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
                              check=False)
    except subprocess.TimeoutExpired:
        fail("chromium did not finish in 120 s: " + " ".join(cmd))
    if done.returncode != 0:
        fail("chromium exited with %d: %s" % (done.returncode, done.stderr.decode()[-2000:]))
    return done.stdout.decode("utf-8")


def read_png(path):
    """(width, height, rows of (r, g, b) tuples) of an 8-bit, non-interlaced RGB(A) PNG."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        fail(path + " is not a PNG")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    if depth != 8 or color not in (2, 6) or interlace:
        fail("unexpected PNG format %r" % (header,))
    channels = 3 if color == 2 else 4
    raw, stride = zlib.decompress(idat), width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * channels:x * channels + 3]) for x in range(width)])
        prev = line
    return width, height, rows


def texts(element):
    return ["".join(t.itertext()).strip() for t in element.iter(SVG + "text")]


def check_dom(dom, title, epochs):
    if "parsererror" in dom:
        fail("chromium could not parse the SVG:\n" + dom[:1500])
    try:
        root = ET.fromstring(dom)
    except ET.ParseError as e:
        fail("the page chromium built is not the SVG (%s):\n%s" % (e, dom[:1500]))
    if root.tag != SVG + "svg":
        fail("the page's root is %s, not an SVG" % root.tag)
    by_id = {e.get("id"): e for e in root.iter() if e.get("id")}
    for part in ("title", "axes", "legend", *COLORS):
        if part not in by_id:
            fail("the page has no element with id '%s'" % part)
    if "".join(by_id["title"].itertext()) != title:
        fail("the title reads %r, not %r" % ("".join(by_id["title"].itertext()), title))
    page_title = root.find(SVG + "title")
    if page_title is None or page_title.text != title:
        fail("the document's <title> is not %r" % title)

    axes = by_id["axes"]
    labels = texts(axes)
    loss_ticks = [t for t in labels if t.replace(".", "").isdigit() and "." in t]
    acc_ticks = [t for t in labels if t.endswith("%")]
    epoch_ticks = [t for t in labels if t.isdigit()]
    if len(loss_ticks) != 5 or len(acc_ticks) != 5:
        fail("expected 5 tick labels per side, got %s and %s" % (loss_ticks, acc_ticks))
    if epoch_ticks != [str(e) for e in epochs]:
        fail("epoch labels %s, expected %s" % (epoch_ticks, epochs))
    for name in ("epoch", "training loss", "accuracy (%)"):
        if name not in labels:
            fail("the axes have no label %r (labels: %s)" % (name, labels))
    if not any(r.get("stroke") == "#888" for r in axes.iter(SVG + "rect")):
        fail("the axes have no frame")

    # Training loss is NaN at the fourth epoch: two lines and five dots. Accuracies: one line
    # through six dots each.
    expect = {"series-train-loss": (2, 5), "series-train-acc": (1, 6), "series-test-acc": (1, 6)}
    for sid, (lines, dots) in expect.items():
        g = by_id[sid]
        got_lines = list(g.iter(SVG + "polyline"))
        got_dots = list(g.iter(SVG + "circle"))
        if len(got_lines) != lines or len(got_dots) != dots:
            fail("%s has %d lines and %d dots, expected %d and %d"
                 % (sid, len(got_lines), len(got_dots), lines, dots))
        for line in got_lines:
            for point in line.get("points").split():
                x, y = (float(v) for v in point.split(","))
                if not (LEFT - 1 <= x <= WIDTH - RIGHT + 1 and TOP - 1 <= y <= HEIGHT - BOTTOM + 1):
                    fail("%s has a point outside the plot: %s" % (sid, point))
    legend = " ".join(texts(by_id["legend"]))
    for name in ("training loss", "training accuracy", "test accuracy"):
        if name not in legend:
            fail("the legend does not name %r: %r" % (name, legend))
    return len(labels)


def check_pixels(png):
    width, height, rows = read_png(png)
    if (width, height) != (WIDTH, HEIGHT):
        fail("the screenshot is %dx%d, expected %dx%d" % (width, height, WIDTH, HEIGHT))

    def near(p, q):
        return all(abs(a - b) <= 12 for a, b in zip(p, q))

    inside = [rows[y][x] for y in range(TOP + 2, HEIGHT - BOTTOM - 1)
              for x in range(LEFT + 2, WIDTH - RIGHT - 1)]
    counts = {}
    for sid, color in COLORS.items():
        counts[sid] = sum(1 for p in inside if near(p, color))
        if counts[sid] < 300:
            fail("the plot area has only %d pixels of %s's colour" % (counts[sid], sid))
    # The frame's 1-pixel edges land between pixel rows and come out as two lighter rows.
    def grey(p):
        return max(p) - min(p) <= 8 and max(p) < 0xD8

    for name, y in (("top", TOP), ("bottom", HEIGHT - BOTTOM)):
        drawn = sum(1 for x in range(LEFT + 2, WIDTH - RIGHT - 2)
                    if any(grey(rows[y + d][x]) for d in (-1, 0, 1)))
        if drawn < (WIDTH - LEFT - RIGHT - 4) * 0.8:
            fail("the frame's %s edge is not drawn (%d grey pixels)" % (name, drawn))
    return counts


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    browser = chromium()
    if not browser:
        print("curves_in_browser: SKIP: no Chromium found (Debian: apt-get install chromium); "
              "the SVG is not checked in a browser")
        return 77
    with tempfile.TemporaryDirectory(prefix="tg_curves_") as work:
        prefix = os.path.join(work, "curves")
        made = subprocess.run([sys.argv[1], prefix], stdout=subprocess.PIPE, check=True)
        title = made.stdout.decode("utf-8").rstrip("\n")
        svg = "file://" + prefix + ".svg"
        n_labels = check_dom(run_browser(browser, work, ["--dump-dom", svg]), title,
                             [1, 2, 3, 4, 5, 6])
        png = os.path.join(work, "curves.png")
        run_browser(browser, work, ["--window-size=%d,%d" % (WIDTH, HEIGHT),
                                    "--screenshot=" + png, svg])
        counts = check_pixels(png)
        print("curves_in_browser: ok (%s): %d axis labels; pixels in the plot: %s"
              % (subprocess.run([browser, "--version"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL).stdout.decode().strip(),
                 n_labels, ", ".join("%s %d" % kv for kv in counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
