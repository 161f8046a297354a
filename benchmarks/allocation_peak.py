"""Peak memory of one box -> mask with glibc's heap out of the way: what the call allocates at its peak.

The speed benchmark's CPU peaks are resident-set growth (``common.PeakMemory``). Under glibc's default
malloc, a freed block larger than the mmap threshold raises that threshold to the block's size (up to 32 MiB),
so after the encoder has run, the decoder's 4-8 MiB temporaries come from the heap, whose free pieces cannot
always be reused in place: the resident peak of the same call then moves with what ran before it (75-116 MiB
for the 512 x 512 box -> mask across runs). Here, in a fresh process started with ``MALLOC_MMAP_THRESHOLD_``
fixed at 128 KiB (which also switches the threshold's raising off), every tensor of 128 KiB or more is its own
mapping, handed back when freed, and the resident peak is what the call's live tensors and arrays need.

``python -m benchmarks.allocation_peak --size 512 --scales 1 2 4`` prints JSON; the speed benchmark runs it as
a subprocess (:func:`allocation_peaks`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence

#: glibc's smallest default mmap threshold (128 KiB); setting it explicitly also stops its dynamic raising
MMAP_THRESHOLD = 128 * 1024


def measure_peaks(backbone: str, size: int, scales: Sequence[int], repeats: int) -> dict:
    """Largest resident peak (MiB) of ``Predictor.predict`` with a fresh box (decoder + UGS threshold +
    render) and with the box cached (render only), per output scale, on the speed benchmark's test image."""
    import torch

    from benchmarks.common import MiB, PeakMemory, box_test_image
    from napari_imedsam import Predictor, load_model
    from src_training.data.boxes import mask_to_box

    dev = torch.device("cpu")
    image, mask = box_test_image(size)
    box = mask_to_box(mask)
    pred = Predictor(load_model(backbone), device=dev)
    pred.set_image(image)
    rows = []
    with torch.no_grad():
        for scale in scales:
            out = (scale * size, scale * size)
            pred.predict(box, out_shape=out)  # warm-up
            fresh, cached = 0, 0
            for _ in range(repeats):
                pred.clear_prompt_cache()
                with PeakMemory(dev) as m:
                    pred.predict(box, out_shape=out)
                fresh = max(fresh, m.peak or 0)
                with PeakMemory(dev) as m:
                    pred.predict(box, out_shape=out)
                cached = max(cached, m.peak or 0)
            rows.append({"scale": scale, "out_shape": list(out), "fresh_box_mib": fresh / MiB,
                         "box_cached_mib": cached / MiB, "repeats": repeats})
    return {"backbone": backbone, "image_size": size, "mmap_threshold": MMAP_THRESHOLD, "rows": rows}


def allocation_peaks(backbone: str, size: int, scales: Sequence[int], repeats: int) -> dict | None:
    """:func:`measure_peaks` in a fresh process with the mmap threshold fixed; None where the resident peak
    cannot be read (no ``/proc``) or the child fails (its error goes to stderr)."""
    from benchmarks.common import cpu_memory_supported

    if not cpu_memory_supported():
        return None
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    cmd = [sys.executable, "-m", "benchmarks.allocation_peak", "--backbone", backbone, "--size", str(size),
           "--repeats", str(repeats), "--scales", *map(str, scales)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="litemedsam")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print(json.dumps(measure_peaks(args.backbone, args.size, args.scales, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
