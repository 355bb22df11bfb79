"""Writing the mask: per-chunk work on the workers, the Zarr store, its pyramid, the quick look."""
