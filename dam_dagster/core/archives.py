"""Archives (zip, and 7z; 3MF projects are zips): what their directories declare, checked
before anything is decompressed.

A zip's central directory lists every member with its compressed and uncompressed size, so a
"zip bomb" (a 2.6 MB 3MF holding a 1 GB model part) is known for what it is before a byte is
inflated, and Python's zipfile never inflates more than a member declares. An archive is
refused (a permanent outcome, `ArchiveBomb`) when

- its members declare more bytes in all than `max_total_bytes` (the render process's memory
  cap: a model part that large could not be parsed within it anyway), or
- a member of at least RATIO_FLOOR_BYTES inflates more than MAX_RATIO times: model parts
  (XML, STL, textures) compress 3 to 30 times; hundreds of times is padding, not a model.

7z archives (py7zr, imported only when a 7z is opened) declare in their header every file's
unpacked size and every folder's (solid block's) packed and unpacked size. A block is refused,
with every member in it (`ArchiveBomb`, before a byte of it is decompressed), when it unpacks to
at least RATIO_FLOOR_BYTES and more than MAX_RATIO times its packed size, the same rule as a zip
member's (in a solid block the ratio is the block's: its members share one stream), or when the
member asked for is over the caller's byte cap (the render process's memory cap). The reader
never decompresses more than a member declares, checks each member's CRC32 when it has read it
whole, and writes nothing anywhere: members stream into memory only.

A solid block is one compressed stream: reading one member decompresses the block from its
start up to that member's end (SevenZip.stream_members reads an archive's members in one pass
per block; read_member, for one member, discards what precedes it in its block).

Names are normalised as a zip's are: forward slashes, no leading '/'; a name with '../' is
catalogued as it is and only ever read into memory, never extracted.

Standard library only for zips: render workers and the inventory both use it.
"""

from __future__ import annotations

import io
import zipfile
import zlib
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


# --- the members of an archive, as files of the catalogue -----------------------------------
ZIP_EXTENSIONS = frozenset({".zip"})
SEVEN_ZIP_EXTENSIONS = frozenset({".7z"})
ARCHIVE_EXTENSIONS = ZIP_EXTENSIONS | SEVEN_ZIP_EXTENSIONS
MEMBER_SEPARATOR = "!/"  # '<archive path>!/<member path>'
# How a render task names a member: '<archive filesystem path>\0<member>' (no path holds a NUL)
MEMBER_MARK = "\0"


class MemberUnreadable(Exception):
    """A member that cannot be read: encrypted, a method zipfile lacks, a broken archive."""

    error_class = "MemberUnreadable"


class BrokenArchive(ValueError):
    """A 7z whose header cannot be read (cut short, not a 7z, a method py7zr lacks)."""


class EncryptedArchive(BrokenArchive):
    """A 7z whose header itself is encrypted: its members cannot even be listed."""


def is_seven_zip(path: str) -> bool:
    return path.lower().endswith(tuple(SEVEN_ZIP_EXTENSIONS))


@dataclass(frozen=True)
class Member:
    name: str  # the path inside the archive, '/'-separated
    size: int  # uncompressed, as the central directory declares it
    compressed: int  # a 7z member in a solid block: its block's packed size
    encrypted: bool
    crc32: int | None = None


def _kept(name: str, keep) -> bool:
    parts = name.split("/")
    return keep is None or all(keep(part, "/".join(parts[: i + 1])) for i, part in enumerate(parts))


def list_members(fs_path: str, keep=None) -> list[Member]:
    """The files inside a zip or a 7z (not their folder entries), from the zip's central
    directory or the 7z's header: nothing is decompressed. `keep(name, rel)` filters (the
    library's include/exclude patterns, applied to the member's own name and path). Raises
    OSError, zipfile.BadZipFile, or BrokenArchive / EncryptedArchive (7z)."""
    if is_seven_zip(fs_path):
        with open(fs_path, "rb") as f, SevenZip(f) as z:
            return [m for m in z.members() if _kept(m.name, keep)]
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
        if not _kept(name, keep):
            continue
        members.append(
            Member(
                name, int(info.file_size), int(info.compress_size), bool(info.flag_bits & 1),
                int(info.CRC),
            )
        )  # fmt: skip
    return members


def read_member(fs_path: str, name: str, max_bytes: int | None = None) -> bytes:
    """One member's bytes, in memory, after the checks (a member over `max_bytes` is refused
    before anything is decompressed). For a member of a solid 7z block this decompresses the
    block from its start up to the member's end (what precedes it is discarded as it comes).
    Raises ArchiveRefused, MemberUnreadable, OSError, or the format's own errors."""
    if is_seven_zip(fs_path):
        with open(fs_path, "rb") as f, SevenZip(f) as z:
            for _name, got in z.stream_members([name], max_bytes):
                if isinstance(got, BaseException):
                    raise got
                return got.read_all()
        raise MemberUnreadable(f"the archive holds no member {name!r} any more")
    with zipfile.ZipFile(fs_path) as z:
        info = member_info(z, name)
        if max_bytes is not None and info.file_size > max_bytes:
            raise ArchiveRefused(_over_cap(info.file_size, max_bytes))
        with open_member(z, name) as stream:
            return stream.read()


def _over_cap(size: int, cap: int) -> str:
    return (
        f"the member declares {size >> 20:,} MB, over the {cap >> 20:,} MB a render process "
        "may use: refused before decompressing"
    )


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


# --- 7z ---------------------------------------------------------------------------------------
def _normalised(name: str) -> str:
    return name.replace("\\", "/").lstrip("/")


class SevenZip:
    """A 7z opened once (its header parsed once) on a binary file object, read with py7zr's
    decoders block by block (py7zr parses the header; this reads its folders, pack positions
    and per-folder decoders, as py7zr's own extraction does, to stream without extracting):
    `members()` lists, `stream_members(names)` reads members in archive order, each block
    decompressed at most once, each member as a stream of at most its declared size. Nothing
    is written anywhere."""

    # How many times this process started decompressing a block (tests count passes with it).
    blocks_decompressed = 0

    def __init__(self, fileobj):
        import py7zr
        from py7zr.exceptions import ArchiveError, PasswordRequired

        self.fp = fileobj
        try:
            self.sz = py7zr.SevenZipFile(fileobj, mode="r")
        except PasswordRequired as exc:
            raise EncryptedArchive(
                "its file list is encrypted: it cannot be read without the password"
            ) from exc
        except (ArchiveError, EOFError, ValueError, KeyError, IndexError, TypeError,
                AttributeError, NotImplementedError) as exc:  # fmt: skip
            raise BrokenArchive(f"not a readable 7z: {exc or type(exc).__name__}") from exc
        self._blocks: list[dict] = []
        self._where: dict[str, tuple[int, int]] = {}  # name -> (block, index in block) / (-1,)
        self._members: list[Member] = []
        try:
            self._index()
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            self.close()
            raise BrokenArchive(f"its header does not add up: {exc}") from exc

    def _index(self) -> None:
        from py7zr.compressor import SupportedMethods

        header = self.sz.header
        streams = getattr(header, "main_streams", None)
        if streams is not None:
            packinfo = streams.packinfo
            stream = 0
            for folder in streams.unpackinfo.folders:
                n = max(1, len(folder.packed_indices or ()))
                self._blocks.append({
                    "folder": folder,
                    "start": self.sz.afterheader + packinfo.packpositions[stream],
                    "packed": int(sum(packinfo.packsizes[stream : stream + n])),
                    "unpacked": int(folder.get_unpack_size()),
                    "files": [],
                    "encrypted": bool(SupportedMethods.needs_password(folder.coders)),
                })  # fmt: skip
                stream += n
        block_of = {id(b["folder"]): i for i, b in enumerate(self._blocks)}
        for f in self.sz.files:  # a block's files, in the order its stream holds them
            if not f.emptystream and f.folder is not None:
                self._blocks[block_of[id(f.folder)]]["files"].append(f)
        for b, block in enumerate(self._blocks):
            solid = len(block["files"]) > 1
            for index, f in enumerate(block["files"]):
                name = _normalised(f.filename or "")
                if not name or name in self._where or f.is_directory:
                    continue  # a name twice: the first is the member
                self._where[name] = (b, index)
                packed = block["packed"] if solid else int(f.compressed or block["packed"])
                self._members.append(
                    Member(name, int(f.uncompressed), packed, block["encrypted"], f.crc32)
                )
        for f in self.sz.files:  # empty files: no stream at all
            name = _normalised(f.filename or "")
            if f.emptystream and not f.is_directory and name and name not in self._where:
                self._where[name] = (-1, -1)
                self._members.append(Member(name, 0, 0, False, 0))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sz.close()
        except Exception:  # noqa: BLE001 - closing a read-only archive
            pass

    def members(self) -> list[Member]:
        return list(self._members)

    def check_block(self, b: int) -> None:
        """Refuse a block of RATIO_FLOOR_BYTES or more that unpacks over MAX_RATIO times."""
        block = self._blocks[b]
        if block["unpacked"] >= RATIO_FLOOR_BYTES and block["unpacked"] > MAX_RATIO * max(
            1, block["packed"]
        ):
            raise ArchiveRefused(
                f"its block of {len(block['files'])} member(s) declares "
                f"{block['unpacked'] / MIB:,.0f} MB packed into {block['packed'] / MIB:,.2f} MB "
                f"(over {MAX_RATIO}:1): a 7z bomb, refused before decompressing"
            )

    def stream_members(self, names, max_bytes: int | None = None):
        """Yield (name, stream) for each of `names` the archive holds, in archive order, or
        (name, exception) for one that cannot be read (no such member, encrypted, a bomb, over
        `max_bytes`, a broken block). Each block holding one of them is decompressed once,
        from its start, up to the last member asked for; a member the consumer did not read
        to its end is read on (and its CRC32 checked) before the next one, except the last
        one asked for in its block (a 4 KiB prefix costs no more than what precedes it). A
        consumer reads a stream before asking for the next pair."""
        wanted: dict[int, dict[int, str]] = {}
        for name in names:
            where = self._where.get(name)
            if where is None:
                yield name, MemberUnreadable(f"the archive holds no member {name!r} any more")
            elif where[0] < 0:
                yield name, _MemberStream(None, None, None, 0)
            else:
                wanted.setdefault(where[0], {})[where[1]] = name
        for b in sorted(wanted):
            asked = wanted[b]
            block = self._blocks[b]
            refusal = self._refusal(b, asked, max_bytes)
            if refusal is not None:
                for i in sorted(asked):
                    yield asked[i], refusal
                continue
            failure: BaseException | None = None
            try:
                self.fp.seek(block["start"])
                first = block["files"][0]
                packed = first.compressed or block["packed"]
                decompressor = block["folder"].get_decompressor(packed, reset=True)
                SevenZip.blocks_decompressed += 1
            except Exception as exc:  # noqa: BLE001 - a decoder py7zr cannot set up
                failure = _unreadable(exc)
            last = max(asked)
            for i, f in enumerate(block["files"][: last + 1]):
                if failure is not None:
                    if i in asked:
                        yield asked[i], failure
                    continue
                stream = _MemberStream(self.fp, decompressor, f.crc32, int(f.uncompressed))
                if i in asked:
                    yield asked[i], stream
                    if i == last:  # nothing more wanted from this block: no need to read on
                        break
                try:
                    stream.drain()
                except Exception as exc:  # noqa: BLE001 - the rest of the block is lost
                    failure = _unreadable(exc)

    def _refusal(self, b: int, asked: dict, max_bytes: int | None) -> BaseException | None:
        block = self._blocks[b]
        if block["encrypted"]:
            return MemberUnreadable(
                "the member is encrypted: it cannot be read without its password"
            )
        try:
            self.check_block(b)
        except ArchiveRefused as exc:
            return exc
        if max_bytes is not None:
            big = max(int(block["files"][i].uncompressed) for i in asked)
            if big > max_bytes:
                return ArchiveRefused(_over_cap(big, max_bytes))
        return None


def _unreadable(exc: BaseException) -> BaseException:
    """What a failure while decompressing says about the member; an I/O error of the storage
    (EIO on a share) stays itself: it may pass."""
    if isinstance(exc, (MemberUnreadable, ArchiveRefused)):
        return exc
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc
    from py7zr.exceptions import PasswordRequired

    if isinstance(exc, PasswordRequired):
        return MemberUnreadable("the member is encrypted: it cannot be read without its password")
    return MemberUnreadable(f"the member cannot be read: {type(exc).__name__}: {exc}")


class _MemberStream:
    """One 7z member's bytes as they are decompressed: never more than its declared size; its
    CRC32 checked once read whole (MemberUnreadable when it differs or the block ends short)."""

    CHUNK = 1024 * 1024

    def __init__(self, fp, decompressor, crc32: int | None, size: int):
        self.fp, self.decompressor, self.crc32 = fp, decompressor, crc32
        self.remaining = size
        self.crc = 0
        self.error: BaseException | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def read(self, n: int = -1) -> bytes:
        if self.error is not None:
            raise self.error
        if self.remaining <= 0:
            return b""
        want = self.remaining if n is None or n < 0 else min(n, self.remaining)
        parts, got = [], 0
        try:
            while got < want:
                at = self.fp.tell()
                chunk = self.decompressor.decompress(self.fp, min(want - got, self.CHUNK))
                if not chunk:
                    if self.fp.tell() == at:
                        raise MemberUnreadable("the archive ends before the member does")
                    continue
                parts.append(chunk)
                got += len(chunk)
        except Exception as exc:
            self.error = _unreadable(exc)
            if self.error is exc:
                raise
            raise self.error from exc
        data = b"".join(parts)
        self.remaining -= len(data)
        self.crc = zlib.crc32(data, self.crc)
        if self.remaining == 0 and self.crc32 is not None and self.crc != self.crc32:
            self.error = MemberUnreadable(
                f"the member's CRC32 is {self.crc:08x}, its archive says {self.crc32:08x}: "
                "the archive is damaged"
            )
            raise self.error
        return data

    def read_all(self) -> bytes:
        return self.read(-1)

    def drain(self) -> None:
        while self.remaining > 0:
            self.read(self.CHUNK)
        if self.error is not None:
            raise self.error
