"""dam_dagster: digital-asset management for large libraries of 3D models, on Dagster."""

__version__ = "0.1.0"
