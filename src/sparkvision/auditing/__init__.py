"""``sparkvision audit``: exact and near duplicates, leakage between splits, label conflicts
and per-class outliers of a data set, computed by Spark (``job.py``: the run and
``audit.json``; ``fingerprints.py``: the executor side — hashes and fingerprints in the
decoding tasks; ``pairs.py``: banded candidate pairs, groups; ``outliers.py``; ``files.py``:
thumbnails of the worst cases; ``dedupe.py``: a copy with one image per duplicate group)."""
