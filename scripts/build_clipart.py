#!/usr/bin/env python3
"""Build transferkit's built-in ``clipart`` image dataset from Debian's openclipart-svg.

The dataset is a small, 12-class collection of public-domain clip art from the
Open Clip Art Library, rasterised to 96x96 RGB on a white background.  It is
shipped inside the package (``transferkit/data/_assets``) so that examples,
tests and benchmarks work offline.

Pipeline
--------
1. For each class (an openclipart ``<category>/<subcategory>`` folder) list all
   ``*.svg`` / ``*.svg.gz`` files recursively (symlinks included), sorted by
   path relative to ``--svg-root``.
2. Drop exact duplicates (same sha256): a file whose content occurs in more
   than one class is dropped everywhere (ambiguous label); within a class only
   its first occurrence (in sorted order) is kept.  Files larger than
   ``--max-bytes`` are skipped as a guard against pathological SVGs, and the
   few files in ``EXCLUDE`` (known bad renders) are skipped too.
3. Shuffle each class's candidate list with a seeded RNG (seed derived from
   ``--seed`` and the class name, so classes are independent of each other).
4. Walk the shuffled candidates in order and render them (in a worker pool,
   each file under a ``--timeout`` alarm) until ``--max-per-class`` images are
   accepted or the candidates run out.  A candidate is rejected if it fails to
   render, times out, is (almost) blank on white, or renders to exactly the
   same pixels as an image accepted before (in any class).
5. Rendering: cairosvg renders the SVG with a transparent background so that
   its long side is ``--render-size`` px; the picture is cropped to the bounding
   box of its visible (non-transparent) pixels plus a small margin,
   composited onto white, padded to a centred square (aspect ratio preserved)
   and downscaled to ``--size`` with a Lanczos filter.

Outputs (in ``--out``)
----------------------
``clipart.npz``            (``np.savez_compressed``)
    ``images``  uint8 (N, size, size, 3), ``labels`` int64 (N,),
    ``classes`` str (12,) -- ``classes[label]`` is the class name.
``clipart_manifest.csv``   index,label,class,source,sha256
    ``source`` is the SVG path relative to ``--svg-root``.
``clipart_LICENSE.txt``    provenance and public-domain statement.

The build is deterministic for a given openclipart-svg package, cairosvg /
cairo and Pillow version: two runs give byte-identical ``images`` arrays.
Acceptance depends only on candidate order, never on timing; the one caveat is
``--timeout``, which must stay far above the slowest legitimate render (the
slowest selected file takes ~15 s alone, ~60 s on a loaded machine).

Usage::

    python scripts/build_clipart.py                      # defaults
    python scripts/build_clipart.py --max-per-class 8 --out /tmp/clip  # quick try
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import multiprocessing as mp
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np

#: (openclipart folder, class name). Order defines the integer labels.
CLASSES: list[tuple[str, str]] = [
    ("animals/mammals", "animals_mammals"),
    ("animals/birds", "animals_birds"),
    ("animals/bugs", "animals_bugs"),
    ("food/fruit", "food_fruit"),
    ("food/desserts", "food_desserts"),
    ("food/beverages", "food_beverages"),
    ("transportation/vehicles", "transportation_vehicles"),
    ("transportation/boating", "transportation_boating"),
    ("plants/flowers", "plants_flowers"),
    ("recreation/music", "recreation_music"),
    ("people/clothing", "people_clothing"),
    ("buildings/homes", "buildings_homes"),
]

SVG_SUFFIXES = (".svg", ".svg.gz", ".svgz")

#: Files that render "successfully" but badly, found by visual inspection of
#: the contact sheet (path relative to the svg root -> reason).  Identical
#: copies (same sha256) elsewhere in the tree are excluded as well.
EXCLUDE: dict[str, str] = {
    "plants/flowers/fiore_01.svg": "drawing extends far beyond its page (clipped)",
    "animals/mammals/skoynk_peterm_.svg": "caption text clipped by the page",
    "animals/mammals/shaezy_peterm_.svg": "caption text clipped by the page",
}

# Rejection thresholds for "(almost) blank" renders, computed on the final
# size x size RGB image: a pixel counts as ink if any channel is below
# INK_LEVEL; an image needs at least MIN_INK_FRACTION ink pixels.
INK_LEVEL = 240
MIN_INK_FRACTION = 0.01

LICENSE_HEADER = """\
transferkit built-in dataset "clipart"
======================================

The images in clipart.npz are rasterised (96x96 RGB, white background) from
SVG files of the Open Clip Art Library (http://www.openclipart.org), as
distributed by the Debian package "openclipart-svg" ({pkg_version}),
installed under /usr/share/openclipart/svg.  The list of source files (path
relative to that folder, with sha256) is in clipart_manifest.csv.

All Open Clip Art Library images are dedicated to the public domain.  The
Debian package's copyright file (/usr/share/doc/openclipart-svg/copyright)
states:

"""


# --------------------------------------------------------------------------
# Candidate listing
# --------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def list_svgs(svg_root: Path, folder: str) -> list[str]:
    """All SVG files under ``svg_root/folder`` (recursive, symlinks followed),
    as sorted POSIX paths relative to ``svg_root``."""
    base = svg_root / folder
    if not base.is_dir():
        raise SystemExit(f"error: class folder not found: {base}")
    out = []
    for dirpath, _dirnames, filenames in os.walk(base, followlinks=True):
        for name in filenames:
            if name.lower().endswith(SVG_SUFFIXES):
                p = Path(dirpath) / name
                if p.is_file():
                    out.append(p.relative_to(svg_root).as_posix())
    return sorted(out)


def class_candidates(svg_root: Path, max_bytes: int, seed: int):
    """Per class: the seeded-shuffled list of (relpath, sha256) candidates."""
    listed = {cname: list_svgs(svg_root, folder) for folder, cname in CLASSES}
    digests: dict[str, str] = {}
    classes_of_digest: dict[str, set[str]] = {}
    for cname, rels in listed.items():
        for rel in rels:
            d = sha256_file(svg_root / rel)
            digests[rel] = d
            classes_of_digest.setdefault(d, set()).add(cname)

    # Exclusion is by content, so identical copies of an excluded file go too.
    excluded_digests = {digests[rel] for rel in EXCLUDE if rel in digests}

    result: dict[str, list[tuple[str, str]]] = {}
    stats: dict[str, dict[str, int]] = {}
    for _folder, cname in CLASSES:
        seen: set[str] = set()
        cands = []
        st = {"listed": len(listed[cname]), "dup": 0, "cross_class": 0, "too_big": 0,
              "excluded": 0}
        for rel in listed[cname]:
            d = digests[rel]
            if d in excluded_digests:
                st["excluded"] += 1
                continue
            if len(classes_of_digest[d]) > 1:
                st["cross_class"] += 1
                continue
            if d in seen:
                st["dup"] += 1
                continue
            seen.add(d)
            if (svg_root / rel).stat().st_size > max_bytes:
                st["too_big"] += 1
                continue
            cands.append((rel, d))
        # String seeds are hashed deterministically by `random` (version 2).
        random.Random(f"{seed}:{cname}").shuffle(cands)
        result[cname] = cands
        stats[cname] = st
    return result, stats


# --------------------------------------------------------------------------
# Rendering (runs in worker processes)
# --------------------------------------------------------------------------


class RenderTimeout(Exception):
    pass


def _alarm_handler(signum, frame):  # pragma: no cover - signal path
    raise RenderTimeout()


def _worker_init() -> None:
    signal.signal(signal.SIGALRM, _alarm_handler)
    # Let the parent handle Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _render_rgba(data: bytes, render_size: int):
    """Render SVG bytes to an RGBA PIL image whose long side is render_size."""
    import cairosvg
    from PIL import Image

    png = cairosvg.svg2png(bytestring=data, output_width=render_size, unsafe=False)
    img = Image.open(io.BytesIO(png))
    img.load()
    if img.height > render_size:  # tall picture: fit the height instead
        png = cairosvg.svg2png(bytestring=data, output_height=render_size, unsafe=False)
        img = Image.open(io.BytesIO(png))
        img.load()
    return img.convert("RGBA")


def render_to_square(data: bytes, size: int, render_size: int) -> np.ndarray:
    """SVG bytes -> (size, size, 3) uint8, content centred on white."""
    from PIL import Image

    rgba = _render_rgba(data, render_size)
    alpha = np.asarray(rgba)[:, :, 3]
    ys, xs = np.nonzero(alpha > 8)
    if len(xs) == 0:
        raise ValueError("empty render (fully transparent)")
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    w, h = x1 - x0, y1 - y0
    side = int(max(w, h) * 1.06) + 2  # ~3% margin on each side of the long axis
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, rgba).convert("RGB")
    crop = flat.crop((int(x0), int(y0), int(x1), int(y1)))
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(crop, ((side - int(w)) // 2, (side - int(h)) // 2))
    out = canvas.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(out, dtype=np.uint8)


def render_job(args):
    """Worker entry point: returns (relpath, array | None, reason)."""
    path, rel, size, render_size, timeout = args
    signal.alarm(timeout)
    try:
        raw = Path(path).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        arr = render_to_square(raw, size, render_size)
        ink = (arr.min(axis=2) < INK_LEVEL).mean()
        if ink < MIN_INK_FRACTION:
            return rel, None, f"blank (ink {ink:.4f})"
        return rel, arr, "ok"
    except RenderTimeout:
        return rel, None, f"timeout (> {timeout}s)"
    except Exception as e:  # noqa: BLE001 - any render failure just skips the file
        return rel, None, f"error: {type(e).__name__}: {str(e)[:120]}"
    finally:
        signal.alarm(0)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def select_and_render(candidates, svg_root: Path, args):
    """Accept the first ``max_per_class`` renderable candidates of each class
    (in shuffled order).  Work is done in rounds: every round renders, for each
    unfinished class, just enough further candidates to fill it (plus a small
    margin), all classes in parallel.  Acceptance depends only on candidate
    order, never on timing, so the result is deterministic."""
    accepted = {c: [] for c in candidates}  # cname -> [(rel, sha, arr)]
    rejected = {c: [] for c in candidates}  # cname -> [(rel, reason)]
    pos = {c: 0 for c in candidates}
    seen_pixels: dict[str, str] = {}  # sha256 of an accepted render -> its source
    ctx = mp.get_context("fork")
    # maxtasksperchild=1: every file is rendered in a fresh worker forked from
    # the same parent state.  Reusing workers is NOT deterministic: cairo/font
    # state left by earlier renders changes how later files with <text> render.
    pool = ctx.Pool(args.jobs, initializer=_worker_init, maxtasksperchild=1)
    try:
        while True:
            batch = []  # (cname, rel, sha, AsyncResult)
            for cname, cands in candidates.items():
                need = args.max_per_class - len(accepted[cname])
                if need <= 0 or pos[cname] >= len(cands):
                    continue
                take = cands[pos[cname] : pos[cname] + need + max(2, need // 8)]
                pos[cname] += len(take)
                for rel, sha in take:
                    job = (str(svg_root / rel), rel, args.size, args.render_size, args.timeout)
                    batch.append((cname, rel, sha, pool.apply_async(render_job, (job,))))
            if not batch:
                break
            for cname, rel, sha, res in batch:
                try:
                    _rel, arr, reason = res.get(timeout=args.timeout + 30)
                except mp.TimeoutError:  # worker stuck inside C code
                    arr, reason = None, "timeout (worker unresponsive)"
                if arr is not None:
                    # different SVG files can draw the very same picture (a copy with other metadata, or
                    # the same drawing filed in two classes): an identical render would leak between
                    # train and test, or carry two labels, so only the first one is kept
                    digest = hashlib.sha256(arr.tobytes()).hexdigest()
                    if digest in seen_pixels:
                        arr, reason = None, f"identical render to {seen_pixels[digest]}"
                if arr is not None and len(accepted[cname]) < args.max_per_class:
                    accepted[cname].append((rel, sha, arr))
                    seen_pixels[digest] = rel
                elif arr is None:
                    rejected[cname].append((rel, reason))
    finally:
        pool.terminate()
        pool.join()
    return accepted, rejected


def debian_package_version() -> str:
    try:
        import subprocess

        v = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "openclipart-svg"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        return f"version {v}" if v else "version unknown"
    except Exception:  # noqa: BLE001
        return "version unknown"


def copyright_statement(path: Path) -> str:
    """The public-domain dedication from the Debian copyright file."""
    if not path.is_file():
        return "  (copyright file not found; Open Clip Art Library: public domain)\n"
    text = path.read_text(errors="replace")
    start = text.find("Copyright:")
    body = text[start:] if start >= 0 else text
    return "\n".join("  " + ln if ln.strip() else "" for ln in body.strip().splitlines()) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Build transferkit's built-in 'clipart' dataset from openclipart-svg.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--svg-root", type=Path, default=Path("/usr/share/openclipart/svg"),
                    help="root of the openclipart SVG tree")
    ap.add_argument("--out", type=Path, default=Path("src/transferkit/data/_assets"),
                    help="output folder")
    ap.add_argument("--size", type=int, default=96, help="output image side (px)")
    ap.add_argument("--render-size", type=int, default=384,
                    help="long side (px) of the intermediate cairosvg render")
    ap.add_argument("--max-per-class", type=int, default=64,
                    help="images per class (fewer where a class has fewer usable files)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the per-class shuffle")
    ap.add_argument("--max-bytes", type=int, default=1_000_000,
                    help="skip SVG files larger than this")
    ap.add_argument("--timeout", type=int, default=300,
                    help="per-file render timeout (s); only a guard against hangs -- keep it "
                         "well above the slowest legitimate file (~15-60 s) so the result "
                         "does not depend on machine load")
    ap.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1),
                    help="render worker processes")
    ap.add_argument("--copyright-file", type=Path,
                    default=Path("/usr/share/doc/openclipart-svg/copyright"))
    ap.add_argument("-v", "--verbose", action="store_true", help="list rejected files")
    args = ap.parse_args(argv)

    try:
        import cairosvg  # noqa: F401
        import PIL
    except ImportError as e:
        raise SystemExit(f"error: {e}; install with `pip install cairosvg pillow`")

    t0 = time.time()
    svg_root = args.svg_root.resolve()
    candidates, stats = class_candidates(svg_root, args.max_bytes, args.seed)
    accepted, rejected = select_and_render(candidates, svg_root, args)

    images, labels, rows = [], [], []
    class_names = [c for _f, c in CLASSES]
    print(f"{'class':26s} {'listed':>6s} {'dup':>4s} {'xcls':>4s} {'big':>4s} "
          f"{'excl':>4s} {'cand':>5s} {'rej':>4s} {'kept':>5s}")
    for label, cname in enumerate(class_names):
        st = stats[cname]
        print(f"{cname:26s} {st['listed']:6d} {st['dup']:4d} {st['cross_class']:4d} "
              f"{st['too_big']:4d} {st['excluded']:4d} {len(candidates[cname]):5d} "
              f"{len(rejected[cname]):4d} {len(accepted[cname]):5d}")
        if args.verbose:
            for rel, reason in rejected[cname]:
                print(f"    rejected {rel}: {reason}")
        for rel, sha, arr in accepted[cname]:
            rows.append((len(images), label, cname, rel, sha))
            images.append(arr)
            labels.append(label)

    images_arr = np.stack(images).astype(np.uint8)
    labels_arr = np.asarray(labels, dtype=np.int64)
    classes_arr = np.asarray(class_names)

    args.out.mkdir(parents=True, exist_ok=True)
    npz_path = args.out / "clipart.npz"
    np.savez_compressed(npz_path, images=images_arr, labels=labels_arr, classes=classes_arr)

    with open(args.out / "clipart_manifest.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["index", "label", "class", "source", "sha256"])
        w.writerows(rows)

    license_text = LICENSE_HEADER.format(pkg_version=debian_package_version())
    license_text += copyright_statement(args.copyright_file)
    license_text += (
        "\nThe rasterised images in clipart.npz are likewise dedicated to the public\n"
        "domain.  Build script: scripts/build_clipart.py\n"
    )
    (args.out / "clipart_LICENSE.txt").write_text(license_text)

    digest = hashlib.sha256(images_arr.tobytes()).hexdigest()
    print(f"total {len(images_arr)} images {images_arr.shape} -> {npz_path} "
          f"({npz_path.stat().st_size / 1e6:.2f} MB)")
    print(f"images sha256 {digest}")
    print(f"cairosvg {cairosvg.__version__}, Pillow {PIL.__version__}, numpy {np.__version__}; "
          f"{time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
