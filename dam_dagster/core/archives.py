"""Zip archives (3MF projects are zips): what the central directory declares, checked before
anything is inflated.

A zip's central directory lists every member with its compressed and uncompressed size, so a
"zip bomb" (a 2.6 MB 3MF holding a 1 GB model part) is known for what it is before a byte is
inflated, and Python's zipfile never inflates more than a member declares. An archive is
refused (a permanent outcome, `ArchiveBomb`) when

- its members declare more bytes in all than `max_total_bytes` (the render process's memory
  cap: a model part that large could not be parsed within it anyway), or
- a member of at least RATIO_FLOOR_BYTES inflates more than MAX_RATIO times: model parts
  (XML, STL, textures) compress 3 to 30 times; hundreds of times is padding, not a model.

Standard library only: render workers and the inventory both use it.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

MAX_RATIO = 200
RATIO_FLOOR_BYTES = 32 * 1024 * 1024
MIB = 1024 * 1024


class ArchiveRefused(Exception):
    """An archive whose declared sizes are absurd: not inflated at all."""

    error_class = "ArchiveBomb"


@dataclass(frozen=True)
class ArchiveSummary:
    members: int
    compressed_bytes: int
    declared_bytes: int


def check_zip(data: bytes, max_total_bytes: int | None) -> ArchiveSummary | None:
    """Raise ArchiveRefused for a bomb; None when `data` is not a readable zip at all (the
    loader then says what is wrong with it)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return None
    declared = sum(i.file_size for i in infos)
    compressed = sum(i.compress_size for i in infos)
    if max_total_bytes is not None and declared > max_total_bytes:
        raise ArchiveRefused(
            f"the archive declares {declared / MIB:,.0f} MB of content in {len(data) / MIB:,.1f} "
            f"MB, over the {max_total_bytes / MIB:,.0f} MB a render process may use: refused "
            "before inflating (raise DAM_RENDER_MEMORY_MB if it is a real model)"
        )
    for info in infos:
        check_ratio(info)
    return ArchiveSummary(len(infos), compressed, declared)


def check_ratio(info: zipfile.ZipInfo) -> None:
    """Refuse a member of RATIO_FLOOR_BYTES or more that inflates over MAX_RATIO times."""
    if info.file_size >= RATIO_FLOOR_BYTES and info.file_size > MAX_RATIO * max(
        1, info.compress_size
    ):
        raise ArchiveRefused(
            f"member {info.filename!r} declares {info.file_size / MIB:,.0f} MB packed into "
            f"{info.compress_size / MIB:,.2f} MB (over {MAX_RATIO}:1): a zip bomb, refused "
            "before inflating"
        )


# --- the members of a zip file, as files of the catalogue -----------------------------------
ARCHIVE_EXTENSIONS = frozenset({".zip"})
MEMBER_SEPARATOR = "!/"  # '<archive path>!/<member path>'
# How a render task names a member: '<archive filesystem path>\0<member>' (no path holds a NUL)
MEMBER_MARK = "\0"


class MemberUnreadable(Exception):
    """A member that cannot be read: encrypted, a method zipfile lacks, a broken archive."""

    error_class = "MemberUnreadable"


@dataclass(frozen=True)
class Member:
    name: str  # the path inside the archive, '/'-separated
    size: int  # uncompressed, as the central directory declares it
    compressed: int
    encrypted: bool


def list_members(fs_path: str, keep=None) -> list[Member]:
    """The files inside a zip (not its folder entries), from its central directory: nothing
    is inflated. `keep(name, rel)` filters (the library's include/exclude patterns, applied
    to the member's own name and path). Raises OSError or zipfile.BadZipFile."""
    with zipfile.ZipFile(fs_path) as z:
        infos = z.infolist()
    members, seen = [], set()
    for info in infos:
        if info.is_dir() or not info.filename.strip("/"):
            continue
        name = info.filename.lstrip("/")
        if name in seen:  # 'a.stl' twice, or 'a.stl' and '/a.stl': the first is the member
            continue
        seen.add(name)
        if keep is not None and not all(
            keep(part, "/".join(name.split("/")[: i + 1])) for i, part in enumerate(name.split("/"))
        ):
            continue
        members.append(
            Member(name, int(info.file_size), int(info.compress_size), bool(info.flag_bits & 1))
        )
    return members


def member_info(z: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    for candidate in (name, "/" + name):
        try:
            return z.getinfo(candidate)
        except KeyError:
            continue
    raise MemberUnreadable(f"the archive holds no member {name!r} any more")


def open_member(z: zipfile.ZipFile, name: str):
    """A stream of a member's uncompressed bytes, after the checks a member must pass."""
    info = member_info(z, name)
    if info.flag_bits & 1:
        raise MemberUnreadable("the member is encrypted: it cannot be read without its password")
    check_ratio(info)
    try:
        return z.open(info)
    except NotImplementedError as exc:  # a compression method zipfile does not know
        raise MemberUnreadable(f"the member cannot be read: {exc}") from exc
