"""`prerank convert`: a team's raw tables (impressions joined with side tables by key, derived columns,
histories from the impressions log) -> the partitions prerank trains on, streamed through an embedded engine."""
