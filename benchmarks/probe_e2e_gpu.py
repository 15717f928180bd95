"""End-to-end probe runs at the real geometries (500x375 VOC frames, 480x640 NYU frames, a ViT-B at 518).

    python benchmarks/probe_e2e_gpu.py --backbone dinov2-vit-b14 --random-init --out results_dir

Generates VOC / NYUv2 files in the real layouts (tests/fixtures_probe.py) at real frame sizes, then runs
``linseg/voc21`` and ``depth/nyu`` through the runner on the ``quick`` budget, in ``cached`` and in ``full``
mode, and prints each phase's seconds and the peak GPU memory. Random weights: it checks that the protocol
runs at full size and how fast, not what it scores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures_probe import write_nyu, write_voc  # noqa: E402

from phreg_bench.runner import RunRequest, run  # noqa: E402
from phreg_bench.tasks.base import RunContext  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="dinov2-vit-b14")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("probe_e2e_results"))
    parser.add_argument("--full-iters", type=int, default=100, help="iterations of the online (full) runs")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp) / "data"
        start = time.perf_counter()
        write_voc(root, n_train=32, n_val=16, size=(375, 500))
        write_nyu(root, n_train=64, n_test=16, size=(480, 640))
        print(f"fixtures written in {time.perf_counter() - start:.1f} s")
        ctx = RunContext(data_root=root, cache_dir=Path(temp) / "cache", device=device, batch_size=16,
                         num_workers=args.workers, budget="quick")
        runs = [("cached", {"train_source": "labeled"}),
                ("full", {"train_source": "labeled", "train_features": "full", "iters": args.full_iters})]
        for mode, overrides in runs:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            request = RunRequest(backbone=args.backbone, tasks=["linseg/voc21", "depth/nyu"],
                                 random_init=args.random_init, protocol_overrides=overrides,
                                 results_dir=args.out / mode)
            start = time.perf_counter()
            for result in run(request, ctx, log=print):
                if result.status != "done":
                    print(f"{result.task}: {result.status} {result.error}")
                    continue
                record = json.loads(Path(result.path).read_text())
                phases = {k: round(v, 2) for k, v in record["timings"]["phases"].items()}
                print(f"[{mode}] {result.task}: {record['metrics']['main']} = {result.value:.4g}; phases {phases}; "
                      f"resolved {record['extra']['resolved']}")
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            print(f"[{mode}] total {time.perf_counter() - start:.1f} s, peak GPU memory {peak:.2f} GiB")


if __name__ == "__main__":
    main()
