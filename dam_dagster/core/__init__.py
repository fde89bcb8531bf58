"""The domain logic, in plain Python with no Dagster import: walking, hashing, grouping,
rendering and the catalogue store. Testable and fast on its own."""
