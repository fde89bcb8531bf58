"""Slicer outputs and slicer projects: the previews they embed and what they say about the
print (docs/MODELS.md, "Slicer files").

* G-code (PrusaSlicer, OrcaSlicer, Bambu Studio, Cura with a thumbnail plugin): previews are
  base64 PNG, JPG or QOI images in comment blocks (``; thumbnail begin 300x300 12345`` ...
  ``; thumbnail end``, ``; thumbnail_QOI begin`` ...); print facts are ``; key = value``
  comments in the header and the configuration block at the end.
* Binary G-code (.bgcode, libbgcode's specification): a file header, then blocks (metadata as
  ``key=value`` lines, thumbnails as PNG/JPG/QOI with their size), then the G-code blocks,
  which are not read. Block checksums (CRC32) are verified when the file has them.
* 3MF projects: Bambu Studio and OrcaSlicer keep their settings in
  Metadata/project_settings.config (JSON), object names in Metadata/model_settings.config
  and, once sliced, time and weight per plate in Metadata/slice_info.config; PrusaSlicer in
  Metadata/Slic3r_PE.config and Metadata/Slic3r_PE_model.config.

The largest preview wins. Print facts: slicer, printer, nozzle (mm), filament types and
colours, object names, and when sliced the estimated print time (s) and filament weight (g).
Plain Python (zlib, zipfile, json, lxml); nothing here renders.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import struct
import zipfile
import zlib

PRINT_KEYS = (
    "slicer",
    "printer",
    "nozzle_mm",
    "filament_types",
    "filament_colours",
    "object_names",
    "print_time_s",
    "filament_g",
)
HEAD_BYTES = 16 << 20  # previews and the header live at the start of a G-code file
TAIL_BYTES = 2 << 20  # the configuration block at its end
MAX_PREVIEW_BYTES = 32 << 20
MAX_CONFIG_BYTES = 32 << 20  # one settings member of a 3MF project
MAX_NAMES = 200


class SlicedFileError(ValueError):
    """A slicer file whose structure is broken (not merely without a preview)."""


def empty_print_facts() -> dict:
    return dict.fromkeys(PRINT_KEYS)


# ----------------------------------------------------------------------------------------
# previews
# ----------------------------------------------------------------------------------------


_THUMB_BEGIN = re.compile(
    rb"^;[ \t]*thumbnail(?:_(PNG|JPG|QOI))?[ \t]+begin[ \t]+(\d+)[ x](\d+)"
    rb"(?:[ \t]+(\d+))?[ \t]*\r?$",
    re.MULTILINE | re.IGNORECASE,
)


def gcode_previews(data: bytes) -> list[tuple[int, int, str, bytes]]:
    """(width, height, format, image bytes) of every preview in a text G-code's comments."""
    head = data[:HEAD_BYTES]
    out = []
    for m in _THUMB_BEGIN.finditer(head):
        fmt = (m.group(1) or b"PNG").decode().upper()
        width, height = int(m.group(2)), int(m.group(3))
        end_re = re.compile(rb"^;[ \t]*thumbnail(?:_\w+)?[ \t]+end", re.MULTILINE | re.IGNORECASE)
        end = end_re.search(head, m.end())
        if end is None:
            continue
        lines = head[m.end() : end.start()].splitlines()
        text = b"".join(line.strip().lstrip(b";").strip() for line in lines)
        if len(text) > MAX_PREVIEW_BYTES * 4 // 3:
            continue
        try:
            image = base64.b64decode(text, validate=False)
        except (binascii.Error, ValueError):
            continue
        if image:
            out.append((width, height, fmt, image))
    return out


BGCODE_MAGIC = b"GCDE"
_BLOCK_TYPES = {0: "file", 1: "gcode", 2: "slicer", 3: "printer", 4: "print", 5: "thumbnail"}
_THUMB_FORMATS = {0: "PNG", 1: "JPG", 2: "QOI"}


def read_bgcode(data: bytes) -> tuple[list[tuple[int, int, str, bytes]], dict[str, str]]:
    """Previews and metadata (every metadata block's key=value pairs; printer and print
    metadata win over slicer metadata) of a binary G-code file. Raises SlicedFileError when
    the file header or a block header is broken; blocks whose checksum does not match are
    left out."""
    if len(data) < 10 or data[:4] != BGCODE_MAGIC:
        raise SlicedFileError("not a binary G-code file (no GCDE header)")
    version, checksum_type = struct.unpack_from("<IH", data, 4)
    if checksum_type not in (0, 1):
        raise SlicedFileError(f"unknown checksum type {checksum_type} in the file header")
    checksum_size = 4 if checksum_type == 1 else 0
    pos = 10
    previews: list[tuple[int, int, str, bytes]] = []
    metadata: dict[str, dict[str, str]] = {}
    while pos + 8 <= len(data):
        block_type, compression, uncompressed = struct.unpack_from("<HHI", data, pos)
        header_size = 8 if compression == 0 else 12
        if block_type not in _BLOCK_TYPES or compression > 3 or pos + header_size > len(data):
            raise SlicedFileError(f"broken block header at byte {pos}")
        size = uncompressed
        if compression:
            (size,) = struct.unpack_from("<I", data, pos + 8)
        params_size = 6 if block_type == 5 else 2
        start = pos + header_size
        end = start + params_size + size
        if end + checksum_size > len(data):
            raise SlicedFileError(f"block at byte {pos} runs past the end of the file")
        if block_type == 1:
            break  # G-code blocks follow the metadata and previews: nothing more to read
        if checksum_size:
            (stored,) = struct.unpack_from("<I", data, end)
            if zlib.crc32(data[pos:end]) != stored:
                pos = end + checksum_size
                continue  # a damaged block: skip it, keep the others
        params = data[start : start + params_size]
        payload = data[start + params_size : end]
        if block_type == 5:
            fmt, width, height = struct.unpack("<HHH", params)
            image = _uncompress(payload, compression, uncompressed)
            if image and fmt in _THUMB_FORMATS:
                previews.append((width, height, _THUMB_FORMATS[fmt], image))
        else:
            text = _uncompress(payload, compression, uncompressed)
            if text is not None:
                metadata[_BLOCK_TYPES[block_type]] = _ini(text.decode("utf-8", "replace"))
        pos = end + checksum_size
    merged: dict[str, str] = {}
    for kind in ("slicer", "file", "print", "printer"):  # later ones win
        merged.update(metadata.get(kind, {}))
    if "producer" in metadata.get("file", {}):
        merged.setdefault("producer", metadata["file"]["producer"])
    return previews, merged


def _uncompress(payload: bytes, compression: int, size: int) -> bytes | None:
    if compression == 0:
        return payload
    if compression == 1 and size <= MAX_CONFIG_BYTES:
        try:
            out = zlib.decompressobj().decompress(payload, size + 1)
        except zlib.error:
            return None
        return out if len(out) == size else None
    return None  # heatshrink: only used for G-code blocks, which are not read


def _ini(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def largest_preview(previews) -> bytes | None:
    """The image bytes of the largest preview that Pillow can decode (largest area first)."""
    from PIL import Image

    for _w, _h, _fmt, image in sorted(previews, key=lambda p: p[0] * p[1], reverse=True):
        try:
            with Image.open(io.BytesIO(image)) as im:
                im.load()
        except Exception:  # noqa: BLE001 - a broken preview: try the next one
            continue
        return image
    return None


# ----------------------------------------------------------------------------------------
# print facts
# ----------------------------------------------------------------------------------------

_COMMENT_KEY = re.compile(
    rb"^;[ \t]*([A-Za-z_][^=:\r\n]{0,80}?)[ \t]*[=:][ \t]*(.*?)[ \t]*\r?$", re.M
)


def gcode_settings(data: bytes) -> tuple[dict[str, str], str | None]:
    """The ``; key = value`` (and ``;KEY:value``) comments of a text G-code's header and
    configuration block, and the slicer named on its first lines."""
    head = data[: 1 << 20]
    tail = data[-TAIL_BYTES:] if len(data) > (1 << 20) else b""
    settings: dict[str, str] = {}
    for chunk in (tail, head):  # the header wins over the configuration block
        for m in _COMMENT_KEY.finditer(chunk):
            key = m.group(1).decode("utf-8", "replace").strip().lower()
            settings[key] = m.group(2).decode("utf-8", "replace")
    return settings, _slicer_name(head)


_GENERATED = re.compile(
    rb"^;[ \t]*(?:generated (?:by|with)[ \t]+|Generated with[ \t]+)?"
    rb"((?:PrusaSlicer|SuperSlicer|OrcaSlicer|BambuStudio|Bambu Studio|Slic3r|Cura_SteamEngine|"
    rb"Cura|Simplify3D|ideaMaker|Snapmaker Luban|Creality Print|ElegooSlicer|"
    rb"AnycubicSlicer|QIDIStudio|KISSlicer)[^\r\n]*?)(?:[ \t]+on[ \t]+\d{4}-.*)?\r?$",
    re.MULTILINE | re.IGNORECASE,
)


def _slicer_name(head: bytes) -> str | None:
    m = _GENERATED.search(head[: 64 << 10])
    if not m:
        return None
    return m.group(1).decode("utf-8", "replace").strip()[:80] or None


def _duration_s(text: str | None) -> float | None:
    """'1d 2h 3m 4s', '2h 3m', '45s' or a plain number of seconds."""
    if not text:
        return None
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([dhms])", text.lower())
    if not parts:
        return None
    unit = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(n) * unit[u] for n, u in parts)


def _number(text) -> float | None:
    if text is None:
        return None
    values = _numbers(text)
    return values[0] if values else None


def _numbers(text) -> list[float]:
    if isinstance(text, (list, tuple)):
        out = []
        for t in text:
            out += _numbers(t)
        return out
    out = []
    for piece in re.split(r"[;,]", str(text)):
        try:
            out.append(float(piece.strip().strip('"')))
        except ValueError:
            continue
    return out


def _list(text, limit: int = 64) -> list[str] | None:
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        items = [str(t) for t in text]
    else:
        items = re.split(r"[;,]", str(text))
    items = [i.strip().strip('"') for i in items]
    items = [i for i in items if i]
    return items[:limit] or None


def _colours(text) -> list[str] | None:
    items = _list(text)
    if not items:
        return None
    out = [i.upper() for i in items if re.fullmatch(r"#[0-9A-Fa-f]{6}([0-9A-Fa-f]{2})?", i)]
    return out or None


def _object_names_from_gcode(data: bytes, settings: dict[str, str]) -> list[str] | None:
    names: list[str] = []
    info = settings.get("objects_info")
    if info:
        try:
            for obj in json.loads(info).get("objects", []):
                if obj.get("name"):
                    names.append(str(obj["name"]))
        except (ValueError, AttributeError, TypeError):
            pass
    if not names:
        head = data[: 4 << 20]
        patterns = (
            rb"EXCLUDE_OBJECT_DEFINE NAME=(\S+)",  # Klipper, OrcaSlicer
            rb'M486 S\d+ A"([^"\r\n]+)"',  # PrusaSlicer, Marlin
            rb"^; printing object ([^\r\n]+?)(?: id:\d+ copy \d+)?\r?$",  # older PrusaSlicer
            rb"^;MESH:([^\r\n]+?)\r?$",  # Cura
        )
        for pattern in patterns:
            for m in re.finditer(pattern, head, re.MULTILINE):
                name = m.group(1).decode("utf-8", "replace").strip()
                if name and name != "NONMESH" and name not in names:
                    names.append(name)
            if names:
                break
    return names[:MAX_NAMES] or None


def _facts_from_settings(settings: dict, slicer: str | None) -> dict:
    """Print facts from PrusaSlicer / OrcaSlicer / Bambu Studio / Cura keys (lower case)."""
    g = settings.get
    facts = empty_print_facts()
    facts["slicer"] = slicer
    printer = g("printer_model") or g("printer_settings_id") or g("target_machine.name")
    printer = printer or g("machine_name") or g("machine type")
    facts["printer"] = str(printer).strip().strip('"')[:120] if printer else None
    facts["nozzle_mm"] = _number(g("nozzle_diameter") or g("machine_nozzle_size"))
    facts["filament_types"] = _list(g("filament_type"))
    facts["filament_colours"] = _colours(g("filament_colour") or g("extruder_colour"))
    time_text = (
        g("estimated printing time (normal mode)")
        or g("total estimated time")
        or g("estimated printing time")
        or g("time")
    )
    facts["print_time_s"] = _duration_s(time_text)
    weight = _number(g("total filament used [g]") or g("total filament weight [g]"))
    if weight is None and g("filament used [g]") is not None:
        weight = sum(_numbers(g("filament used [g]"))) or None  # one value per extruder
    facts["filament_g"] = weight
    return facts


def gcode_print_facts(data: bytes) -> dict:
    settings, slicer = gcode_settings(data)
    if slicer is None:
        bambu = re.search(rb"^; (BambuStudio [\d.]+)", data[:4096], re.MULTILINE)
        slicer = bambu.group(1).decode() if bambu else None
    # Bambu Studio's header: '; model printing time: 1h 2m; total estimated time: 1h 10m'
    m = re.search(rb"total estimated time:[ \t]*([^;\r\n]+)", data[: 1 << 20])
    if m and "total estimated time" not in settings:
        settings["total estimated time"] = m.group(1).decode("utf-8", "replace")
    facts = _facts_from_settings(settings, slicer)
    facts["object_names"] = _object_names_from_gcode(data, settings)
    return facts


def bgcode_print_facts(metadata: dict[str, str]) -> dict:
    slicer = metadata.get("producer")
    facts = _facts_from_settings(metadata, slicer)
    info = metadata.get("objects_info")
    facts["object_names"] = _object_names_from_gcode(b"", {"objects_info": info} if info else {})
    return facts


# -- 3MF projects --------------------------------------------------------------------------


def _xml(data: bytes):
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    return etree.fromstring(data, parser)


def _member(z: zipfile.ZipFile, names: dict, name: str) -> bytes | None:
    info = names.get(name.lower())
    if info is None or info.file_size > MAX_CONFIG_BYTES:
        return None
    return z.read(info)


def threemf_print_facts(data: bytes, mesh_names: list[str] | None = None) -> dict:
    """Print facts of a 3MF project (empty when it is a plain 3MF: then only the object
    names, from `mesh_names`)."""
    facts = empty_print_facts()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = {i.filename.lower(): i for i in z.infolist() if not i.is_dir()}
            _threemf_application(z, names, facts)
            project = _member(z, names, "Metadata/project_settings.config")
            if project:
                _bambu_project(project, facts)
            prusa = _member(z, names, "Metadata/Slic3r_PE.config")
            if prusa:
                settings = {
                    m.group(1).decode("utf-8", "replace").strip().lower(): m.group(2).decode(
                        "utf-8", "replace"
                    )
                    for m in _COMMENT_KEY.finditer(prusa)
                }
                found = _facts_from_settings(settings, None)
                for key in ("printer", "nozzle_mm", "filament_types", "filament_colours"):
                    facts[key] = facts[key] or found[key]
            for member, xpath in (
                ("Metadata/model_settings.config", "./object/metadata[@key='name']"),
                ("Metadata/Slic3r_PE_model.config", "./object/metadata[@key='name']"),
            ):
                content = _member(z, names, member)
                if content and not facts["object_names"]:
                    try:
                        found = [e.get("value") for e in _xml(content).findall(xpath)]
                    except Exception:  # noqa: BLE001 - a broken config member is skipped
                        found = []
                    facts["object_names"] = [n for n in found if n][:MAX_NAMES] or None
            sliced = _member(z, names, "Metadata/slice_info.config")
            if sliced:
                _bambu_slice_info(sliced, facts)
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, RuntimeError, EOFError):
        pass
    if not facts["object_names"] and mesh_names:
        facts["object_names"] = list(mesh_names)[:MAX_NAMES]
    return facts


def _threemf_application(z, names, facts) -> None:
    for name, info in names.items():
        if name.endswith(".model") and name.startswith("3d/"):
            with z.open(info) as f:
                head = f.read(64 << 10)
            m = re.search(rb'<metadata\s+name="Application"\s*>([^<]{1,120})</metadata>', head)
            if m:
                app = m.group(1).decode("utf-8", "replace").strip()
                facts["slicer"] = re.sub(r"^([A-Za-z ]+?)-(\d)", r"\1 \2", app)
            return


def _bambu_project(content: bytes, facts: dict) -> None:
    try:
        settings = json.loads(content.decode("utf-8", "replace"))
    except ValueError:
        return
    if not isinstance(settings, dict):
        return
    settings = {str(k).lower(): v for k, v in settings.items()}
    found = _facts_from_settings(settings, None)
    for key in ("printer", "nozzle_mm", "filament_types", "filament_colours"):
        facts[key] = found[key]


def _bambu_slice_info(content: bytes, facts: dict) -> None:
    try:
        root = _xml(content)
    except Exception:  # noqa: BLE001 - a broken member is skipped
        return
    seconds = grams = 0.0
    types, colours, objects = [], [], []
    sliced = False
    for plate in root.findall("./plate"):
        meta = {m.get("key"): m.get("value") for m in plate.findall("./metadata")}
        if meta.get("prediction") is not None:
            sliced = True
            seconds += _number(meta.get("prediction")) or 0.0
            grams += _number(meta.get("weight")) or 0.0
        for f in plate.findall("./filament"):
            if f.get("type") and f.get("type") not in types:
                types.append(f.get("type"))
            colour = (f.get("color") or "").upper()
            if colour and colour not in colours:
                colours.append(colour)
        for o in plate.findall("./object"):
            if o.get("name") and o.get("name") not in objects:
                objects.append(o.get("name"))
    version = root.find("./header/header_item[@key='X-BBL-Client-Version']")
    if version is not None and version.get("value") and not facts["slicer"]:
        facts["slicer"] = f"Bambu Studio {version.get('value')}"
    if sliced:
        facts["print_time_s"] = seconds
        facts["filament_g"] = round(grams, 3)
    # once sliced, the filaments the plates use say more than every slot of the project
    facts["filament_types"] = types or facts["filament_types"]
    facts["filament_colours"] = _colours(colours) or facts["filament_colours"]
    facts["object_names"] = facts["object_names"] or objects[:MAX_NAMES] or None
