"""Segmentation zoo on this machine: parameters, FLOPs per slice, training images/s, inference slices/s.

    python benchmarks/seg_speed.py [--size 256] [--batch 8] [--archs unar lightunet ...] [--out FILE]

FLOPs are counted by ``torch.utils.flop_counter`` for one forward pass of one slice (multiply-add
counted as 2). Training throughput is forward + backward + AdamW step on random input with the
paper's loss; inference is eval-mode forward under ``torch.inference_mode``. Warm-up iterations are
not timed. Results are printed as a table and saved as JSON (default benchmarks/results/seg_speed.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from lungcad.models import SEGMENTERS, create_segmenter


def flops_per_slice(model: torch.nn.Module, size: int) -> float:
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, 1, size, size))
    return float(counter.get_total_flops())


def train_speed(model, size: int, batch: int, iters: int) -> float:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 1, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.9).float()
    bce = torch.nn.BCEWithLogitsLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        loss = 0.52 * bce(logits, y) + 0.48 * dice
        loss.backward()
        opt.step()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(iters):
        step()
    return batch * iters / (time.perf_counter() - t)


def infer_speed(model, size: int, batch: int, iters: int) -> float:
    model.eval()
    x = torch.rand(batch, 1, size, size)
    with torch.inference_mode():
        model(x)  # warm-up
        t = time.perf_counter()
        for _ in range(iters):
            model(x)
    return batch * iters / (time.perf_counter() - t)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--archs", nargs="*", default=list(SEGMENTERS))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "seg_speed.json")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for arch in a.archs:
        model = create_segmenter(arch, in_channels=1)
        row = {
            "arch": arch,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops_per_slice": flops_per_slice(model, a.size) / 1e9,
            "train_images_per_s": train_speed(model, a.size, a.batch, a.iters),
            "infer_slices_per_s": infer_speed(model, a.size, a.batch, a.iters),
        }
        rows.append(row)
        print(f"{arch:15s} params {row['params_m']:6.2f} M  {row['gflops_per_slice']:6.2f} GFLOP/slice  "
              f"train {row['train_images_per_s']:6.2f} img/s  infer {row['infer_slices_per_s']:6.2f} slices/s", flush=True)
    result = {
        "benchmark": "seg_speed", "size": a.size, "batch": a.batch, "iters": a.iters, "device": "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        # Other processes skew throughput: the 1-minute load average when the run ended says how busy it was.
        "loadavg_1min_at_end": os.getloadavg()[0], "results": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {a.out}")
    return result


if __name__ == "__main__":
    main()
