"""TFDS dataset package ``sfs_songs`` (importing it registers the builder)."""

from data_pipeline.sfs_songs.sfs_songs import Builder, SfsSongsConfig

__all__ = ["Builder", "SfsSongsConfig"]
