"""Where the work runs: the Dask cluster, and remote storage settings (S3, fsspec, GDAL)."""
