"""Same model, different file: groups of present files whose geometry fingerprint (measured by
the render lanes, core/render/facts.py) is the same while their bytes are not all the same.

A group has at least two distinct contents (MD5 of the whole file); members that are byte for
byte the same as an earlier member (lower file_id) say so in `exact_duplicate_of_id`, so a
group of three where two are copies reads "one model, two files, one of them twice". Groups
whose members are all identical are plain duplicates (`dam duplicates`) and are not listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .store import Catalogue


def update_similar_models(catalogue: Catalogue) -> dict:
    """Rebuild the `similar_models` table from the current model facts; its figures."""
    with catalogue.connect() as con:
        con.execute("DELETE FROM similar_models")
        con.execute(
            """
            INSERT INTO similar_models
            WITH measured AS (
                SELECT file_id, fingerprint, content_md5 FROM current_model_facts
                WHERE fingerprint IS NOT NULL AND content_md5 IS NOT NULL
            ), shared AS (
                SELECT fingerprint FROM measured GROUP BY fingerprint
                HAVING count(DISTINCT content_md5) >= 2
            )
            SELECT
                m.file_id,
                m.fingerprint,
                min(m.file_id) OVER (PARTITION BY m.fingerprint) AS group_id,
                count(*) OVER (PARTITION BY m.fingerprint) AS group_size,
                NULLIF(min(m.file_id) OVER (PARTITION BY m.fingerprint, m.content_md5),
                       m.file_id) AS exact_duplicate_of_id
            FROM measured m JOIN shared USING (fingerprint)
            """
        )
        groups, files, copies = con.execute(
            "SELECT count(DISTINCT group_id), count(*), count(exact_duplicate_of_id) "
            "FROM similar_models"
        ).fetchone()
        measured = con.execute(
            "SELECT count(*) FROM current_model_facts WHERE fingerprint IS NOT NULL"
        ).fetchone()[0]
    return {
        "groups": int(groups),
        "files": int(files),
        "exact_copies_within_groups": int(copies),
        "models_with_fingerprint": int(measured),
    }


@dataclass
class SimilarGroup:
    fingerprint: str
    members: list[str] = field(default_factory=list)  # absolute paths, by file_id
    exact_duplicates: list[list[str]] = field(default_factory=list)  # same bytes, 2+ paths
    triangles: int | None = None
    size_mm: tuple[float, float, float] | None = None  # of the first member
    extensions: list[str] = field(default_factory=list)


def similar_groups(catalogue: Catalogue) -> list[SimilarGroup]:
    """The groups of the last `similar_models` materialization, largest first."""
    with catalogue.connect(write=False) as con:
        rows = con.execute(
            """
            SELECT s.group_id, s.fingerprint, s.file_id, f.path, f.extension,
                   COALESCE(s.exact_duplicate_of_id, s.file_id) AS same_bytes,
                   m.triangles, m.size_x_mm, m.size_y_mm, m.size_z_mm, s.group_size
            FROM similar_models s
            JOIN present_files f USING (file_id)
            LEFT JOIN current_model_facts m USING (file_id)
            ORDER BY s.group_size DESC, s.group_id, s.file_id
            """
        ).fetchall()
    groups: dict[int, SimilarGroup] = {}
    by_bytes: dict[tuple[int, int], list[str]] = {}
    for group_id, fp, _file_id, path, ext, same, tris, sx, sy, sz, _n in rows:
        g = groups.get(group_id)
        if g is None:
            g = groups[group_id] = SimilarGroup(fp, triangles=tris)
            if sx is not None:
                g.size_mm = (round(sx, 3), round(sy, 3), round(sz, 3))
        g.members.append(path)
        if ext not in g.extensions:
            g.extensions.append(ext)
        by_bytes.setdefault((group_id, same), []).append(path)
    for (group_id, _), paths in by_bytes.items():
        if len(paths) > 1:
            groups[group_id].exact_duplicates.append(paths)
    return list(groups.values())
