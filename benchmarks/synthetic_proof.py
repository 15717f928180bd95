"""The synthetic proof that PH-Reg removes planted artifacts: prints the Table-3-style ablation table.

    python benchmarks/synthetic_proof.py [--steps 200] [--threads 1] [--json out.json] [--seed 0]

Builds the planted-artifact ViT and its artifact-free twin, distils the four Table 3 students (registers
yes/no × denoised target yes/no) on generated scenes, runs test-time registers (Jiang et al., NeurIPS'25:
register neurons found on the same scenes, training-free), and evaluates every model: high-norm outlier rate,
closed-form linear-probe mIoU and depth RMSE, worst-1 % cosine to the twin, share of the planted neurons'
firing on registers. Also prints the wall time of each distillation and how well the register-neuron finder
recovered the planted neurons. Everything runs on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="distillation steps per student (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1, as `phreg-bench run`: the numbers of the proof table "
                             "move in the last digit with the thread count; 0: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the rows and timings here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from phreg_bench.synthetic.proof import ProofConfig, format_table, run_proof

    config = replace(ProofConfig(), steps=args.steps, seed=args.seed)
    start = time.perf_counter()
    result = run_proof(config, log=lambda line: print(line, file=sys.stderr))
    print(format_table(result.rows))
    finder = result.ttr_finder
    print(f"\ntest-time registers: planted neurons {finder['planted']}, found {finder['found']}; "
          f"recall@{finder['top_k']} {finder['recall_at_k']:.2f}, precision@{finder['top_k']} "
          f"{finder['precision_at_k']:.2f}, R-precision {finder['r_precision']:.2f}")
    print(f"\n{torch.get_num_threads()} CPU threads; total {time.perf_counter() - start:.1f}s; per student: "
          + ", ".join(f"{r.name} {r.seconds:.1f}s" for r in result.rows if r.seconds))
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
