"""The catalog: append-only Parquet tables, SQL over them, and which images are done."""
