"""Regenerate the screenshots in docs/ from the HTML pages the toolkit writes.

    python docs/_tools/screenshots.py            # both pictures
    python docs/_tools/screenshots.py sae        # only docs/sae-dashboard.png

Each page is made by the command the docs name beside its picture (run here,
offline, on the bundled zoo), rendered in headless Chromium by the driver the
browser test uses (``tests/browser.py``), checked the same way (no console
error, every image loaded) and captured at 1280 px wide, cropped to its first
``HEIGHT`` pixels:

* ``docs/sae-dashboard.png``: ``culture-interp sae features --model 0 --source
  bundled --sae bundled --top 12 --num-samples 300 --out DIR``;
* ``docs/universality-families.png``: ``culture-interp universality compare
  --models 0 1 2 3 --source bundled --tokens 40000 --sae bundled --ceiling-sae
  bundled --json features.json --dashboard DIR`` (about 3 minutes on 2 cores).

Commit the pictures: the site's figure captions take their code version from
the commit that last changed them.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.browser import render  # noqa: E402

HEIGHT = 1600
SHOTS = {
    "sae": ("sae-dashboard.png",
            "sae features --model 0 --source bundled --sae bundled --top 12 --num-samples 300 --out {out}"),
    "families": ("universality-families.png",
                 "universality compare --models 0 1 2 3 --source bundled --tokens 40000 --sae bundled "
                 "--ceiling-sae bundled --json {tmp}/features.json --dashboard {out}"),
}


def shoot(name: str) -> Path:
    from PIL import Image

    from culture_cli.main import main

    file, command = SHOTS[name]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "page"
        argv = command.format(out=out, tmp=tmp).split()
        try:
            main(argv)
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise SystemExit(f"culture-interp {' '.join(argv)} failed with exit code {exc.code}")
        rendered = render(out / "index.html", screenshot=True)
    broken = [i for i in rendered.images if i["width"] == 0]
    if rendered.errors or broken:
        raise SystemExit(f"{file}: the page does not render cleanly: {rendered.errors} {broken}")
    with Image.open(io.BytesIO(rendered.screenshot)) as im:
        shot = im.convert("RGB").crop((0, 0, im.width, min(HEIGHT, im.height)))
        target = ROOT / "docs" / file
        tmp_target = target.with_suffix(".tmp.png")
        shot.save(tmp_target, optimize=True)
        tmp_target.replace(target)
    print(f"wrote {target.relative_to(ROOT)} ({shot.width}x{shot.height})")
    return target


if __name__ == "__main__":
    for name in sys.argv[1:] or list(SHOTS):
        if name not in SHOTS:
            raise SystemExit(f"error: unknown screenshot {name!r}; choose from {', '.join(SHOTS)}")
        shoot(name)
