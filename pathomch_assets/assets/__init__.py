"""Dagster assets, one module per stage of the pipeline.  Each asset is its decorator, one call into the plain
module of its step (``ingest``, ``rounds``, ``members``, ``predictions``, ``evaluation``, ``validity``, ``maps``,
``cohort_survival``: procedures that read and write the tables, over the science modules) and its metadata.  An
asset module imports from another only the assets it depends on, never a helper."""
