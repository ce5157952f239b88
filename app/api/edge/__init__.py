"""The edge every protocol shares: the body, parameters, keys, readiness, error tables and
the app state. Protocol adapters (`api/v1`, `api/v2`, `api/admin`) import it; nothing below
the API does."""
