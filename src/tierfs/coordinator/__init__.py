"""The coordinator: membership, the file-location index and cluster statistics.

`app.create_app` builds the aiohttp application (routes in `routes.py`, state in SQLite
through `db.py`); `client.CoordinatorClient` is what a node runs to take part.
"""
