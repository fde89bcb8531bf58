"""The library browser: a Starlette app over the read replica of the catalogue (app.py)."""
