"""A render worker process: reads, hashes and thumbnails one file at a time for the pool.

Forked by the pool's fork server (zygote.py), which has imported this module and the render
stack (numpy, Pillow, trimesh, pyrender) once: a new worker costs a fork, not a second of
imports. Each worker owns ONE EGL context, created at its first 3D render and reused for every
file it renders until the pool recycles it.

Per file: the bytes are read once and MD5-hashed; if thumbs_dir/ab/<md5>.png exists the answer
is source='cache' with no parsing (unless the task asks for the model's facts); images go
through Pillow (source='image'); G-code and a 3MF's embedded preview are used when present
(source='embedded'); anything else is parsed from those same bytes and rendered
(source='render'). Every model that is parsed is also measured from the same parse: its
geometry facts and fingerprint (facts.py) and, for slicer files, its print facts (slicer.py)
go back with the outcome.

Test hooks: when the pool passes `hang_suffix` (from the environment variable
DAM_RENDER_TEST_HANG_SUFFIX, e.g. ".hang.stl"), a file whose name ends with it makes the worker
sleep forever, so tests can check that the per-file timeout kills and replaces it; likewise
`crash_suffix` (DAM_RENDER_TEST_CRASH_SUFFIX) makes it die of SIGSEGV, as a driver crash would.
Nothing else reads those variables; leave them unset outside tests.
"""

from __future__ import annotations

import os

# Before numpy or OpenGL are imported (here or, preloaded, in the fork server):
os.environ["PYOPENGL_PLATFORM"] = "egl"
os.environ["MESA_SHADER_CACHE_DISABLE"] = "true"  # Mesa would write under ~/.cache otherwise
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # workers are the parallelism

import errno  # noqa: E402
import hashlib  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from ..archives import (  # noqa: E402
    MEMBER_MARK,
    ArchiveRefused,
    BrokenArchive,
    MemberUnreadable,
    SevenZip,
    check_zip,
    is_seven_zip,
    member_info,
    open_member,
)
from ..failures import PermanentFailure, describe_os_error, os_error_is_transient  # noqa: E402
from ..reading import open_readonly  # noqa: E402
from .api import (  # noqa: E402
    IMAGE_EXTENSIONS,
    MODEL_EXTENSIONS,
    SLICED_EXTENSIONS,
    extension_of,
    parse_background,
    thumbnail_relpath,
)

_MESSAGE_MAX = 500


def _short(message: str | None) -> str | None:
    if message is not None and len(message) > _MESSAGE_MAX:
        message = message[: _MESSAGE_MAX - 3] + "..."
    return message


def _result(
    status,
    source=None,
    md5=None,
    rel=None,
    error_class=None,
    message=None,
    transient=False,
    facts=None,
    facts_error=None,
) -> dict:
    return {
        "status": status,
        "source": source,
        "content_md5": md5,
        "thumbnail_relpath": rel,
        "error_class": error_class,
        "error_message": _short(message),
        "transient": transient,
        "facts": facts,
        "facts_error": facts_error,
    }


def read_file(path: str) -> bytes:
    """The whole file (core/reading.py opens it); a FIFO or folder put where a file was
    cannot block the worker."""
    fd = open_readonly(path)
    with open(fd, "rb", buffering=0) as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not stat.S_ISREG(mode):
            raise OSError(errno.ENXIO, "not a regular file", path)
        return f.read()


class Worker:
    """The per-process state: settings, the lazily created GL renderer, counters."""

    def __init__(self, settings: dict):
        self.thumbs_dir = Path(settings["thumbs_dir"])
        self.size = int(settings["size"])
        self.background = settings["background"]
        self.bg_rgba = parse_background(self.background)
        self.prefer_embedded = bool(settings["prefer_embedded"])
        self.overwrite = bool(settings.get("overwrite", False))
        self.memory_mb = int(settings["memory_mb"])
        self.measure = bool(settings.get("facts", True))
        self.hang_suffix = (settings.get("hang_suffix") or "").lower()
        self.crash_suffix = (settings.get("crash_suffix") or "").lower()
        self._renderer = None
        self._renderer_error: str | None = None

    # -- the GL side -------------------------------------------------------------------

    def renderer(self):
        if self._renderer is None:
            if self._renderer_error is not None:
                from .gl import RendererUnavailable

                raise RendererUnavailable(self._renderer_error)
            try:
                from .gl import ThumbnailRenderer

                self._renderer = ThumbnailRenderer(self.size, self.bg_rgba)
            except Exception as exc:
                self._renderer_error = (
                    str(exc)
                    if type(exc).__name__ == "RendererUnavailable"
                    else f"{type(exc).__name__}: {exc}"
                )
                raise
        return self._renderer

    def reset_renderer(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def close(self) -> None:
        self.reset_renderer()

    # -- one file ----------------------------------------------------------------------

    def _member(self, task_path: str) -> bytes:
        """The bytes of an archive member (task path '<archive>\\0<member>'), in memory, after
        the archive's declared sizes passed the checks (core/archives.py). A member of a solid
        7z block costs the decompression of its block up to its end (what precedes it is
        discarded as it comes; only the member is held)."""
        import lzma
        import zipfile
        import zlib

        archive, member = task_path.split(MEMBER_MARK, 1)
        try:
            with open(open_readonly(archive), "rb") as f:
                if is_seven_zip(archive):
                    with SevenZip(f) as z:
                        for _name, got in z.stream_members([member], self.memory_mb << 20):
                            if isinstance(got, BaseException):
                                raise got
                            return got.read_all()
                with zipfile.ZipFile(f) as z:
                    info = member_info(z, member)
                    if info.file_size > self.memory_mb << 20:
                        raise PermanentFailure(
                            "ArchiveBomb",
                            f"the member declares {info.file_size >> 20:,} MB, over the "
                            f"{self.memory_mb} MB a render process may use: refused before "
                            "inflating",
                        )
                    with open_member(z, member) as stream:
                        return stream.read()
        except (ArchiveRefused, MemberUnreadable) as exc:
            raise PermanentFailure(exc.error_class, str(exc)) from exc
        except BrokenArchive as exc:
            raise PermanentFailure(type(exc).__name__, str(exc)) from exc
        except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, RuntimeError) as exc:
            raise PermanentFailure(type(exc).__name__, f"cannot read the member: {exc}") from exc

    def process(
        self, path: str, size_bytes: int, rerender: bool = False, need_facts: bool = False
    ) -> dict:
        ext = extension_of(path.split(MEMBER_MARK, 1)[-1])
        if self.hang_suffix and path.lower().endswith(self.hang_suffix):
            while True:  # test hook: see the module docstring
                time.sleep(3600)
        if self.crash_suffix and path.lower().endswith(self.crash_suffix):
            os.kill(os.getpid(), signal.SIGSEGV)  # test hook: see the module docstring
        if ext not in MODEL_EXTENSIONS and ext not in IMAGE_EXTENSIONS:
            return _result(
                "unsupported",
                error_class="UnsupportedFormat",
                message=f"no thumbnailer for '{ext or 'no extension'}' files",
            )
        try:
            data = read_file(path) if MEMBER_MARK not in path else self._member(path)
        except PermanentFailure as exc:  # encrypted, a bomb, a broken archive: about the file
            return _result("failed", error_class=exc.error_class, message=str(exc))
        except OSError as exc:  # vanished, permission denied: about the file; EIO: may pass
            return _result(
                "failed",
                error_class=type(exc).__name__,
                message=f"cannot read the file: {describe_os_error(exc)}",
                transient=os_error_is_transient(exc),
            )
        except MemoryError:
            return _result(
                "memory",
                error_class="MemoryLimit",
                message="out of memory reading the file",
                transient=True,
            )
        md5 = hashlib.md5(data).hexdigest()
        rel = thumbnail_relpath(md5)
        cached = not (self.overwrite or rerender) and (self.thumbs_dir / rel).is_file()
        if cached and not (need_facts and ext in MODEL_EXTENSIONS and data):
            return _result("ok", "cache", md5, rel)
        if not data:
            return _result(
                "failed", md5=md5, error_class="EmptyFile", message="the file is empty (0 bytes)"
            )
        if ext == ".3mf":  # a zip: its declared sizes are checked before anything is inflated
            try:
                check_zip(data, self.memory_mb << 20)
            except ArchiveRefused as exc:
                return _result("failed", md5=md5, error_class=exc.error_class, message=str(exc))
        try:
            if ext in IMAGE_EXTENSIONS:
                return self._image(data, md5)
            if ext in SLICED_EXTENSIONS:
                return self._sliced(data, ext, md5, cached)
            if cached:  # the PNG is current: only the facts were asked for
                facts, error = self._measure_only(data, ext, path)
                return _result("ok", "cache", md5, rel, facts=facts, facts_error=error)
            if ext == ".3mf" and self.prefer_embedded:
                done = self._embedded(data, md5, path)
                if done is not None:
                    return done
            return self._render(data, ext, path, md5)
        except MemoryError:
            self.reset_renderer()
            return _result(
                "memory",
                md5=md5,
                error_class="MemoryLimit",
                message="out of memory (allocation refused)",
                transient=True,
            )
        except OSError as exc:
            # Writing the PNG into the data folder (the loader's own OSErrors are the model's,
            # in _render): a full disk or a folder made unwritable is not the model's fault
            # and may pass, so it is tried again, whatever the errno.
            return _result(
                "failed",
                md5=md5,
                error_class=type(exc).__name__,
                message=f"cannot write the thumbnail: {exc}",
                transient=True,
            )

    # -- what the same parse tells about the model ------------------------------------

    def _facts(self, model, data: bytes, ext: str) -> tuple[dict | None, list | None, tuple]:
        """(facts, per-drawable sums, facts error): geometry facts of the loaded model, plus
        print facts for 3MF projects. Never raises for a model it cannot measure."""
        if not self.measure:
            return None, None, None
        from .facts import measure
        from .slicer import PRINT_KEYS, threemf_print_facts

        try:
            facts, sums = measure(model)
        except MemoryError:
            raise
        except Exception as exc:  # a model we cannot measure still gets its thumbnail
            return None, None, (type(exc).__name__, _short(f"cannot measure: {_describe(exc)}"))
        if ext == ".3mf":
            facts.update(threemf_print_facts(data, model.names))
        else:
            facts.update(dict.fromkeys(PRINT_KEYS))
        return facts, sums, None

    def _measure_only(self, data: bytes, ext: str, path: str):
        from .loaders import LoadError, load_model

        try:
            model = load_model(data, ext, path, memory_mb=self.memory_mb)
        except LoadError as exc:
            return None, (exc.error_class, _short(str(exc)))
        except (MemoryError, OSError):
            raise
        except Exception as exc:
            return None, (type(exc).__name__, _short(f"cannot parse the model: {_describe(exc)}"))
        facts, _, error = self._facts(model, data, ext)
        return facts, error

    def _image(self, data: bytes, md5: str) -> dict:
        from .images import fit_image, write_png

        try:
            image = fit_image(data, self.size, self.background)
        except MemoryError:
            raise
        except Exception as exc:  # UnidentifiedImageError, truncated data (OSErrors from
            # decoding bytes already in memory: permanent), DecompressionBombError, ...
            return _result(
                "failed",
                md5=md5,
                error_class=type(exc).__name__,
                message=f"cannot decode the image: {exc}",
            )
        return _result("ok", "image", md5, write_png(image, self.thumbs_dir, md5))

    def _sliced(self, data: bytes, ext: str, md5: str, cached: bool) -> dict:
        """G-code and binary G-code: the largest embedded preview, and the print facts."""
        from .images import fit_image, write_png
        from .slicer import (
            SlicedFileError,
            bgcode_print_facts,
            gcode_previews,
            gcode_print_facts,
            largest_preview,
            read_bgcode,
        )

        if ext == ".bgcode":
            try:
                previews, metadata = read_bgcode(data)
            except SlicedFileError as exc:
                return _result("failed", md5=md5, error_class="CorruptFile", message=str(exc))
            facts = bgcode_print_facts(metadata)
        else:
            previews = gcode_previews(data)
            facts = gcode_print_facts(data)
        rel = thumbnail_relpath(md5)
        if cached:
            return _result("ok", "cache", md5, rel, facts=facts)
        preview = largest_preview(previews)
        if preview is None:
            return _result(
                "unsupported",
                md5=md5,
                error_class="NoPreview",
                message="the G-code carries no thumbnail (the slicer writes one when its "
                "printer settings ask for thumbnails)",
                facts=facts,
            )
        image = fit_image(preview, self.size, self.background)
        return _result("ok", "embedded", md5, write_png(image, self.thumbs_dir, md5), facts=facts)

    def _embedded(self, data: bytes, md5: str, path: str) -> dict | None:
        from .images import fit_image, write_png
        from .loaders import find_3mf_preview

        preview = find_3mf_preview(data)
        if preview is None:
            return None
        try:
            image = fit_image(preview, self.size, self.background)
        except Exception:
            return None  # a broken preview: render the model instead
        rel = write_png(image, self.thumbs_dir, md5)
        facts, error = self._measure_only(data, ".3mf", path) if self.measure else (None, None)
        return _result("ok", "embedded", md5, rel, facts=facts, facts_error=error)

    def _render(self, data: bytes, ext: str, path: str, md5: str) -> dict:
        from .images import write_png
        from .loaders import LoadError, load_model, prepare_for_drawing

        try:
            model = load_model(data, ext, path, memory_mb=self.memory_mb)
        except LoadError as exc:
            return _result(
                exc.status,
                md5=md5,
                error_class=exc.error_class,
                message=str(exc),
                transient=exc.status == "memory",
            )
        except MemoryError:
            raise
        except OSError as exc:  # a side file (glTF buffer, texture) missing or unreadable
            side = f": {os.path.basename(str(exc.filename))}" if exc.filename else ""
            return _result(
                "failed",
                md5=md5,
                error_class=type(exc).__name__,
                message=f"cannot read the model or a file it refers to: "
                f"{describe_os_error(exc)}{side}",
                transient=os_error_is_transient(exc),
            )
        except Exception as exc:
            return _result(
                "failed",
                md5=md5,
                error_class=type(exc).__name__,
                message=f"cannot parse the model: {_describe(exc)}",
            )
        facts, sums, facts_error = self._facts(model, data, ext)
        del data
        prepare_for_drawing(model, sums)
        try:
            renderer = self.renderer()
        except Exception as exc:
            return _result(
                "failed",
                md5=md5,
                error_class="RendererUnavailable",
                message=str(exc),
                transient=True,
                facts=facts,
                facts_error=facts_error,
            )
        try:
            image = renderer.render(model)
        except MemoryError:
            raise
        except Exception as exc:
            self.reset_renderer()  # a GL error may leave the context in a bad state
            return _result(
                "failed",
                md5=md5,
                error_class=type(exc).__name__,
                message=f"rendering failed: {_describe(exc)}",
                facts=facts,
                facts_error=facts_error,
            )
        rel = write_png(image, self.thumbs_dir, md5)
        return _result("ok", "render", md5, rel, facts=facts, facts_error=facts_error)


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    tb = traceback.extract_tb(exc.__traceback__)
    if tb:
        last = tb[-1]
        text += f" (at {os.path.basename(last.filename)}:{last.lineno})"
    return text


def _quiet() -> None:
    """Keep the run's log for outcomes: trimesh's loader chatter and numpy's warnings about
    degenerate triangles say nothing the outcome does not."""
    import logging
    import warnings

    logging.getLogger("trimesh").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    try:
        import numpy

        numpy.seterr(all="ignore")
    except ImportError:  # pragma: no cover
        pass


def _set_parent_death_signal() -> None:
    """Die with the pool: SIGKILL when the process that forked us goes away (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _limit_address_space(limit_mb: int | None) -> None:
    if not limit_mb:
        return
    try:
        limit = int(limit_mb) << 20
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):
        pass


def main(conn, settings: dict) -> None:
    """Worker loop: ('task', seq, path, size) -> ('done', seq, result, cpu_s, maxrss_kb)."""
    _set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the pool's to handle
    _quiet()
    os.environ["LP_NUM_THREADS"] = str(settings["gl_threads"])
    _limit_address_space(settings.get("address_space_mb"))
    worker = Worker(settings)
    conn.send(("ready", os.getpid()))
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message[0] != "task":
                break
            _, seq, path, size_bytes, rerender, need_facts = message
            started = time.perf_counter()
            try:
                result = worker.process(path, size_bytes, rerender, need_facts)
            except MemoryError:
                result = _result(
                    "memory", error_class="MemoryLimit", message="out of memory", transient=True
                )
            except Exception as exc:  # a bug of ours: report it, keep the worker
                result = _result(
                    "failed",
                    error_class=type(exc).__name__,
                    message=f"internal error: {_describe(exc)}",
                )
            result["seconds"] = time.perf_counter() - started
            usage = resource.getrusage(resource.RUSAGE_SELF)
            try:
                conn.send(("done", seq, result, time.process_time(), usage.ru_maxrss))
            except (BrokenPipeError, OSError):
                break
    finally:
        worker.close()
