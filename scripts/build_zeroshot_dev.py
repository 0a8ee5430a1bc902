"""Build the zero-shot *development* set: 14 Open Clip Art categories that are none of the built-in clipart's 12
(fish, dinosaurs, trees, vegetables, meats and eggs, breads, weapons, sports, toys, computer hardware, telephones,
clocks, books, weather), rendered by the same pipeline as clipart (scripts/build_clipart.py). The zero-shot
defaults (prompt, wording of the ImageNet classes, ConSE's prior and centring) were chosen on this set, so that no
choice looks at clipart's labels (see benchmarks/bench_zeroshot.py and benchmarks/RESULTS.md).

    python scripts/build_zeroshot_dev.py --out /tmp/zs-dev     # then: bench_zeroshot.py --dev /tmp/zs-dev/clipart.npz

Needs the Debian package openclipart-svg and cairosvg (as build_clipart.py); 342 images, sha256 of the image array
01c11cba5fd61bbd6358950725817c1568fa1c6007fcb1e812162f86ce66af01 here.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_clipart as b  # noqa: E402

b.CLASSES = [(f, f.replace("/", "_")) for f in [
    "animals/fish", "animals/dinosaurs", "plants/trees", "food/vegetables", "food/meats_and_eggs",
    "food/breads_and_carbs", "tools/weapons", "recreation/sports", "recreation/toys", "computer/hardware",
    "office/telephone", "signs_and_symbols/clocks", "education/books", "signs_and_symbols/weather"]]

if __name__ == "__main__":
    sys.exit(b.main())
