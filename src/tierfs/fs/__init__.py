"""The filesystem core: inodes, metadata, open files. No FUSE here: tested without a kernel."""
