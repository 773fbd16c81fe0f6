"""MRI inference precision: PSNR of the shipped 2x model with the UNet in fp32 and under bf16 autocast.

The 1 mm MNI152 template is degraded by 2x (`degrade.degrade`), a 48^3 high-resolution block inside
the held-out slab (`data.HOLDOUT` along `data.HOLDOUT_AXIS`, never trained on) is super-resolved with
the same seed in each precision (`infer.super_resolve`, `--samples` K, `--steps`), and scored inside
the head mask (`metrics.psnr`). Prints one line per precision and the differences; on the CPU only
fp32 and bf16 are meaningful (fp16 autocast is a GPU setting).

    python -m benchmarks.mri_precision                        # fp32 vs bf16, K = 2, 5 steps, CPU
    python -m benchmarks.mri_precision --device cuda --precisions fp32 bf16 fp16
"""

from __future__ import annotations

import argparse
import json
import time

BLOCK = (slice(74, 122), slice(112, 160), slice(70, 118))  # 48^3, aligned to 2, inside the held-out slab


def measure(precision: str, samples: int, steps: int, device: str) -> dict:
    """PSNR and SSIM of the posterior-mean estimate and the sample mean for one precision."""
    from sciffusion.plugins.mri.data import mni_volume
    from sciffusion.plugins.mri.model import default_checkpoint, load_checkpoint
    from sciffusion.plugins.mri.pipeline import evaluate_reference

    model = load_checkpoint(default_checkpoint((2, 2, 2)))
    t0 = time.time()
    run = evaluate_reference(mni_volume(1), model, samples=samples, steps=steps, seed=0, device=device,
                             crop=BLOCK, precision=precision)
    m = run.metrics["methods"]
    return {"precision": precision, "psnr": m["sciffusion"]["psnr"], "ssim": m["sciffusion"]["ssim"],
            "psnr_sample_mean": m["sciffusion_sample_mean"]["psnr"], "seconds": round(time.time() - t0, 1),
            "mean": run.result.mean}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    args = p.parse_args(argv)
    rows = [measure(pr, args.samples, args.steps, args.device) for pr in args.precisions]
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k != "mean"}))
    for r in rows[1:]:
        diff = abs(r["mean"] - rows[0]["mean"]).max()
        print(f"{r['precision']} - {rows[0]['precision']}: PSNR {r['psnr'] - rows[0]['psnr']:+.4f} dB "
              f"(sample mean {r['psnr_sample_mean'] - rows[0]['psnr_sample_mean']:+.4f} dB), "
              f"max |difference| of the estimate {diff:.4g} (scanner units)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
