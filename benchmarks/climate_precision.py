"""Climate UNet autocast: fair CRPS of bf16 against fp32 sampling on held-out ERA5-sample times, same seed.

    python -m benchmarks.climate_precision --times 2 --members 2 --steps 5

The shipped ERA5-sample checkpoint downscales the coarsened truth of the first held-out times (those not
in its training times) twice, with `precision="fp32"` and `"bf16"` and the same seed, and prints the
fair CRPS of each variable and the relative change. On a CPU without native bf16 the bf16 run is slow
(emulated); the check is of accuracy, not speed.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np
import torch


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--times", type=int, default=2)
    p.add_argument("--members", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from sciffusion.plugins.climate.api import load_model
    from sciffusion.plugins.climate.io import era5_sample_path, load_times, open_fields
    from sciffusion.plugins.climate.metrics import fair_crps

    model = load_model("plugins/climate/checkpoints/era5_sample_x4.pt")
    ds = open_fields(era5_sample_path(), list(model.cfg.variables)).sel(latitude=model.grids.lat,
                                                                        longitude=model.grids.lon)
    train = {np.datetime64(t) for t in model.cfg.train_times}
    held = [i for i, t in enumerate(ds["time"].values) if t not in train][: args.times]
    truth = load_times(ds, held, model.cfg.variables)
    coarse = model.grids.coarsen(truth)
    out: dict = {"times": [str(ds["time"].values[i])[:16] for i in held], "members": args.members, "steps": args.steps}
    for precision in ("fp32", "bf16"):
        t0 = time.process_time()
        ens = model.sample(coarse, members=args.members, steps=args.steps, seed=0, times=ds["time"].values[held],
                           precision=precision)
        out[precision] = {"cpu_s": round(time.process_time() - t0, 1),
                          **{v: fair_crps(ens[:, :, c], truth[:, c], model.grids.lat)
                             for c, v in enumerate(model.cfg.variables)}}
    out["relative_change"] = {v: out["bf16"][v] / out["fp32"][v] - 1 for v in model.cfg.variables}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
