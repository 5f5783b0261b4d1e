"""The upload journal: what it names survives reopening, so do the contents of failed
puts, and a journal of an earlier tierfs (no base versions) still opens with its rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tierfs.upload import TRIED_KEPT, Begun, Content, PendingUpload, Removal, UploadJournal


def began(journal: UploadJournal, staging: Path | None) -> list[Begun]:
    """The journal's notes of the uploads of `staging` begun (None: the streams'), read
    from its file as the next run reads them."""
    db = sqlite3.connect(journal.path)
    try:
        rows = db.execute(
            "SELECT rowid, key, moment FROM begun WHERE staging IS ? ORDER BY rowid",
            (None if staging is None else str(staging),),
        ).fetchall()
    finally:
        db.close()
    return [Begun(row, key, moment) for row, key, moment in rows]


def test_rows_outlive_the_journal_and_go_when_done(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = UploadJournal(path)
    journal.begin("a/new.bin", tmp_path / "s1", "")
    journal.begin("a/old.bin", tmp_path / "s2", '"etag-1"')
    journal.begin("a/moved.bin", tmp_path / "s1", "")  # the same staging file, moved
    journal.close()
    journal = UploadJournal(path)
    assert journal.pending() == [
        PendingUpload("a/old.bin", tmp_path / "s2", '"etag-1"'),
        PendingUpload("a/moved.bin", tmp_path / "s1", ""),
    ]
    journal.done(tmp_path / "s2")
    assert [row.key for row in journal.pending()] == ["a/moved.bin"]
    journal.close()


def test_failed_puts_are_remembered_until_the_file_is_begun_again(tmp_path: Path) -> None:
    path, staging = tmp_path / "journal.sqlite3", tmp_path / "s"
    journal = UploadJournal(path)
    journal.begin("a.bin", staging, '"etag-1"')
    assert journal.tried(staging) == []
    contents = [Content(size, f"{size:032x}") for size in range(TRIED_KEPT + 2)]
    for content in [*contents, contents[-2]]:  # one tried twice: noted once, as the last
        journal.note_tried(staging, content)
    journal.close()
    journal = UploadJournal(path)
    kept = [*contents[-TRIED_KEPT:-2], contents[-1], contents[-2]]
    assert journal.tried(staging) == kept
    journal.begin("a.bin", staging, '"etag-2"')  # uploaded, and written again
    assert journal.tried(staging) == []
    journal.close()


def test_a_journal_of_an_earlier_tierfs_opens_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE pending (staging TEXT PRIMARY KEY, key TEXT NOT NULL)")
        db.execute("INSERT INTO pending VALUES (?, ?)", (str(tmp_path / "s"), "kept.bin"))
    db.close()
    journal = UploadJournal(path)
    assert journal.pending() == [PendingUpload("kept.bin", tmp_path / "s", None)]
    journal.begin("new.bin", tmp_path / "t", "")
    assert journal.pending()[1] == PendingUpload("new.bin", tmp_path / "t", "")
    journal.close()


def test_a_removal_and_the_uploads_begun_outlive_the_journal(tmp_path: Path) -> None:
    """What a restart after a crash needs: whether the file was being removed, and when
    and under which key its multipart uploads began (the last TRIED_KEPT), even once it
    was moved (begun again under its new key: the old key's upload was left); and the
    streams' uploads, which have no row. A file done has none left."""
    path, staging = tmp_path / "journal.sqlite3", tmp_path / "s"
    journal = UploadJournal(path)
    journal.begin("a.bin", staging, '"etag-1"')
    journal.removing(staging, Removal.UNDER_WAY)
    moments = [1_800_000_000.0 + n for n in range(TRIED_KEPT + 1)]
    for moment in moments:
        journal.note_began(staging, "a.bin", moment)
    stream = journal.note_began(None, "streamed.bin", 1_800_000_100.0)
    journal.note_began(None, "completed.bin", 1_800_000_200.0)
    journal.close()
    journal = UploadJournal(path)
    assert journal.pending() == [
        PendingUpload("a.bin", staging, '"etag-1"', removing=Removal.UNDER_WAY)
    ]
    assert [(b.key, b.moment) for b in began(journal, staging)] == [
        ("a.bin", moment) for moment in moments[1:]
    ]
    journal.removing(staging, Removal.NONE)  # the removal failed
    assert not journal.pending()[0].removing
    journal.begin("moved/a.bin", staging, '"etag-2"')
    journal.note_began(staging, "moved/a.bin", 1_800_000_300.0)
    assert [b.key for b in began(journal, staging)][-2:] == ["a.bin", "moved/a.bin"]
    journal.forget_began([b.row for b in began(journal, None) if b.key == "completed.bin"])
    assert [(b.row, b.key) for b in began(journal, None)] == [(stream, "streamed.bin")]
    journal.done(staging)
    assert began(journal, staging) == []
    journal.close()


def test_a_file_moved_with_its_folder_keeps_what_its_row_noted(tmp_path: Path) -> None:
    """Its failed puts and its removal stay with the row under its new key (a new row,
    `begin`, forgot them before 2026-12-07); its uploads begun keep their old key."""
    path, staging = tmp_path / "journal.sqlite3", tmp_path / "s"
    journal = UploadJournal(path)
    journal.begin("d/a.bin", staging, '"etag-1"')
    journal.note_tried(staging, Content(7, "0" * 32))
    journal.removing(staging, Removal.UNDER_WAY)
    journal.note_began(staging, "d/a.bin", 1_800_000_000.0)
    journal.moved("e/a.bin", staging, '"etag-2"')
    journal.close()
    journal = UploadJournal(path)
    assert journal.pending() == [
        PendingUpload("e/a.bin", staging, '"etag-2"', removing=Removal.UNDER_WAY)
    ]
    assert journal.tried(staging) == [Content(7, "0" * 32)]
    assert [b.key for b in began(journal, staging)] == ["d/a.bin"]
    journal.close()


def test_the_uploads_begun_noted_by_an_earlier_tierfs_are_still_aborted(tmp_path: Path) -> None:
    """A tierfs of 2026-12-06 noted the moments a file's uploads began in a column
    `began` of its row ("moment;moment"), which later ones did not read: its restart
    left them in the bucket. They are moved to `begun` under the row's key, once."""
    path, staging = tmp_path / "journal.sqlite3", tmp_path / "s"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE pending (staging TEXT PRIMARY KEY, key TEXT NOT NULL, base TEXT,"
            " tried TEXT, removing INTEGER, began TEXT)"
        )
        db.execute(
            "INSERT INTO pending VALUES (?, ?, ?, NULL, NULL, ?)",
            (str(staging), "a.bin", '"etag-1"', "1800000000.000;1800000001.500"),
        )
        db.execute(
            "INSERT INTO pending VALUES (?, ?, ?, NULL, NULL, NULL)",
            (str(tmp_path / "t"), "b.bin", ""),
        )
    db.close()
    for _ in range(2):  # the second open moves nothing again
        journal = UploadJournal(path)
        assert [(b.key, b.moment) for b in began(journal, staging)] == [
            ("a.bin", 1_800_000_000.0),
            ("a.bin", 1_800_000_001.5),
        ]
        assert began(journal, tmp_path / "t") == []
        assert journal.pending() == [
            PendingUpload("a.bin", staging, '"etag-1"'),
            PendingUpload("b.bin", tmp_path / "t", ""),
        ]
        journal.close()


def test_the_uploads_a_previous_run_began_outlive_their_files_rows(tmp_path: Path) -> None:
    """Taken by the restart (`leave_began`), a run's notes of uploads begun, its files'
    and its streams', stay when a file's row goes (`done`: put again), each until it is
    forgotten once aborted: an abort that could not reach the store is tried again."""
    path, staging = tmp_path / "journal.sqlite3", tmp_path / "s"
    journal = UploadJournal(path)
    journal.begin("a.bin", staging, "")
    journal.note_began(staging, "a.bin", 1_800_000_000.0)
    journal.note_began(None, "streamed.bin", 1_800_000_001.0)
    journal.close()
    journal = UploadJournal(path)
    left = journal.leave_began()
    assert [(b.key, b.moment) for b in left] == [
        ("a.bin", 1_800_000_000.0),
        ("streamed.bin", 1_800_000_001.0),
    ]
    journal.done(staging)
    assert began(journal, None) == left
    journal.forget_began([left[1].row])
    assert journal.leave_began() == left[:1]
    journal.close()
