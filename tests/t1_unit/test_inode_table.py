"""The inode table keeps the nodes the kernel forgot that hold what the mount set."""

import pytest

from tierfs.errors import StaleHandleError
from tierfs.fs.nodes import InodeTable


def test_a_forgotten_node_keeps_its_settings_while_few_are_kept() -> None:
    """A node with a mode or a time set here outlives the kernel's forget, the latest
    `kept_forgotten` of them; a node holding nothing set here leaves the table."""
    table = InodeTable(kept_forgotten=2)
    plain = table.ensure("plain", is_dir=False)
    set_here = [table.ensure(name, is_dir=False) for name in ("a", "b", "c")]
    set_here[0].mode = 0o600
    set_here[1].mtime_set_for = '"v1"'
    set_here[2].atime_ns = 7
    for node in [plain, *set_here]:
        node.lookups = 1
        table.forget(node.inode, 1)
    assert table.find("plain") is None
    assert [table.find(name) for name in ("a", "b", "c")] == [None, *set_here[1:]]
    assert table.get(set_here[2].inode) is set_here[2]


def test_a_kept_node_looked_up_again_is_never_dropped_under_the_kernel() -> None:
    """A kept node the kernel looks up again stays while it holds it, even when more
    forgotten ones come after it; forgotten again, it is kept again."""
    table = InodeTable(kept_forgotten=1)
    first, second = table.ensure("first", is_dir=False), table.ensure("second", is_dir=True)
    first.mode = second.mode = 0o700
    table.forget(first.inode, 0)
    first.lookups = 1  # looked up again
    table.forget(second.inode, 0)
    assert table.find("first") is first and table.find("second") is second
    table.forget(first.inode, 1)
    assert table.find("first") is first and table.find("second") is None


def test_a_removed_or_moved_kept_node_follows_its_path() -> None:
    """A kept node leaves with its path's removal, and moves with its folder."""
    table = InodeTable()
    moved, removed = table.ensure("d/f", is_dir=False), table.ensure("gone", is_dir=False)
    moved.mode = removed.mode = 0o600
    table.forget(moved.inode, 0)
    table.forget(removed.inode, 0)
    table.ensure("d", is_dir=True)
    table.move("d", "e")
    table.remove("gone")
    assert table.find("e/f") is moved and table.find("d/f") is None
    assert table.find("gone") is None
    with pytest.raises(StaleHandleError):
        table.get(removed.inode)
