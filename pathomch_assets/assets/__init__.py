"""Dagster assets, thin over the science modules.  One module per stage of the pipeline."""
