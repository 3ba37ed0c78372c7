"""Small shared pieces: keyset pagination, the dotted spec-path walker, JSON numbers."""
