"""SUPERB (PR, ASR, KS, SID, ER) through s3prl's own downstream runner: configs, data-root layout, sweeps with
resume, results tables and charts, leaderboard submission."""
