"""tierfs: a distributed filesystem for cloud object storage with a three-tier cache."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tierfs")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
