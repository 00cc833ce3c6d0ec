"""The province-merger consolidation: three legacy provincial systems into the new Ninh Bình's one.

Ninh Bình, Nam Định and Hà Nam became one province (the new Ninh Bình) on
2025-07-01. :mod:`consolidation.mapping` maps every old commune to one of the
new province's communes (or says why not); :mod:`consolidation.pipeline` pulls
the three legacy systems, remaps codes, matches the same citizen or enterprise
across systems, resolves conflicting fields by documented rules
(:mod:`consolidation.rules`), records every decision and reconciles the counts.
See docs/merger.md.
"""
