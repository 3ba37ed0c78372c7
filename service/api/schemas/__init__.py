"""API schemas: what the HTTP contract shows, one module per feature.

Kept apart from the ORM models (``service.db.models``) and from the experiment contract
(``service.specs``). ``common`` holds what every feature shares: the error body, the
page envelope and the JSON spelling of non-finite numbers.
"""
