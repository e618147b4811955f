"""The paper's tables and figures regenerated from a results tree, with claims and provenance."""
