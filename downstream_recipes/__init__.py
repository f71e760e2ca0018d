"""SUPERB downstream recipes run through s3prl's own downstream runner."""
