"""The trees tests compare: a folder as a local program sees it, and the bucket behind a
mount as the same program would see it through a fresh mount."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path

from mounts import Mount, cloud_of
from tierfs.chunks import Data
from tierfs.cloud.base import split_markers
from tierfs.fs.metadata import LINK_SUFFIX


def file_entry(data: Data) -> str:
    """How `tree` names a file: its size and digest."""
    return f"{len(data)} bytes {hashlib.sha256(data).hexdigest()[:16]}"


def raise_it(error: OSError) -> None:
    """os.walk's `onerror`: a folder that cannot be listed fails the walk."""
    raise error


def tree(root: Path) -> dict[str, str]:
    """Every folder, file and link below `root`: a file by its size and digest, a link by
    its target. An error listing a folder is raised (os.walk would pass over it)."""
    found: dict[str, str] = {}
    for folder, subfolders, names in os.walk(root, onerror=raise_it):
        for name in [*subfolders, *names]:
            path = Path(folder, name)
            if path.is_symlink():
                found[os.path.relpath(path, root)] = f"link to {os.readlink(path)}"
            elif name in subfolders:
                found[os.path.relpath(path, root)] = "folder"
            else:
                found[os.path.relpath(path, root)] = file_entry(path.read_bytes())
    return found


def modes(root: Path) -> dict[str, str]:
    """The permission bits of every folder and file below `root` (not links: theirs are
    always 0777); as `tree`, an error listing a folder is raised."""
    found = {}
    for folder, subfolders, names in os.walk(root, onerror=raise_it):
        for name in [*subfolders, *names]:
            path = Path(folder, name)
            if not path.is_symlink():
                found[os.path.relpath(path, root)] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def bucket_tree(mount: Mount, folder: str) -> dict[str, str]:
    """What the bucket behind `mount` holds below `folder`, as `tree` names it."""

    async def listed() -> dict[str, str]:
        cloud = cloud_of(mount)
        try:
            listed = (await cloud.list_all(folder + "/", delimiter=False)).objects
            files, markers = split_markers(listed)
            found = {}
            for meta in sorted(files, key=lambda meta: meta.key.endswith(LINK_SUFFIX)):
                data = await cloud.get_range(meta.key, 0, meta.size, meta.version)
                name = meta.key[len(folder) + 1 :]
                if not name.endswith(LINK_SUFFIX):
                    found[name] = file_entry(data)
                elif (link := name.removesuffix(LINK_SUFFIX)) not in found:
                    found[link] = f"link to {bytes(data).decode()}"  # a file of its name wins
            for path in [*found, *(marker[len(folder) + 1 :] + "/" for marker in markers)]:
                parents = path.split("/")[:-1]  # a marker's own name among them
                for depth in range(1, len(parents) + 1):
                    found["/".join(parents[:depth])] = "folder"
            found.pop("", None)  # the program's own folder
            return found
        finally:
            await cloud.close()

    return asyncio.run(listed())
