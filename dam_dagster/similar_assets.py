"""Same model, different file: `similar_models`, downstream of the render lanes.

    thumbnails_fast, thumbnails_slow -> similar_models

The lanes measure every model they parse (core/render/facts.py): one of the facts is a
geometry fingerprint, the same for one mesh whatever the file (triangle order, format,
header, a translation, float noise). This asset groups the files that share it while their
bytes differ (core/similar.py); `dam similar` lists the groups. It follows the lanes on its
own (eager, and also when some partition has never materialized: a failed slow-lane
partition must not keep the groups of everything else from updating).
"""

import dagster as dg

from .core.similar import similar_groups, update_similar_models
from .dedup_assets import table_metadata
from .executors import IO_TAGS
from .resources import CatalogueResource
from .thumbnail_assets import thumbnails_fast, thumbnails_slow

GROUP = "models"
AFTER_THE_LANES = dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb", "python"},
    deps=[thumbnails_fast, thumbnails_slow],
    automation_condition=AFTER_THE_LANES,
    op_tags=IO_TAGS,  # reads only the catalogue: with the chain, near the data
    description="Groups of files holding the same mesh in different bytes (geometry "
    "fingerprint), with which members are also exact copies.",
)
def similar_models(
    context: dg.AssetExecutionContext, catalogue: CatalogueResource
) -> dg.MaterializeResult:
    cat = catalogue.catalogue(context.log)
    stats = update_similar_models(cat)
    context.log.info(
        f"similar models: {stats['groups']} groups, {stats['files']} files, of "
        f"{stats['models_with_fingerprint']} models with a fingerprint"
    )
    groups = similar_groups(cat)
    lines = ["| files | triangles | size (mm) | formats | first member |", "|---|---|---|---|---|"]
    for g in groups[:15]:
        size = " x ".join(f"{v:g}" for v in g.size_mm) if g.size_mm else ""
        lines.append(
            f"| {len(g.members)} | {g.triangles or ''} | {size} | {' '.join(g.extensions)} | "
            f"`{g.members[0]}` |"
        )
    return dg.MaterializeResult(
        metadata={
            **table_metadata(cat, "similar_models"),
            "groups": stats["groups"],
            "files in groups": stats["files"],
            "exact copies within groups": stats["exact_copies_within_groups"],
            "models with a fingerprint": stats["models_with_fingerprint"],
            "largest groups": dg.MetadataValue.md("\n".join(lines)),
        }
    )


ASSETS = [similar_models]
similar_job = dg.define_asset_job("similar_models_job", selection=[similar_models])
