"""Talking to registries: pull, push, login, search and manifest inspection over the distribution API.

- ``client``: one registry over HTTP(S) with ``requests``: endpoints,
  retries with backoff, redirects that keep credentials home, errors.
- ``tls``: a registry's CAs and client certificate, from its certs.d directory.
- ``auth``: ``config.json`` credentials, basic auth and the bearer token flow
  (identity tokens as OAuth2 refresh tokens).
- ``credhelpers``: Docker's credential helpers (``docker-credential-NAME``).
- ``download``: resumable blob downloads (``ingest/<hex>.partial``, ``Range``).
- ``pull``: manifests, platform choice, parallel layers, registering the image.
- ``push``: blobs the registry lacks (HEAD, cross-repository mount, monolithic
  or chunked upload), then the original manifest bytes.
- ``progress``: the pull output of the Docker CLI.
- ``gojson``: JSON compacted and indented as Go's ``encoding/json`` does it.
- ``inspect``: ``manifest inspect`` documents; ``search``: Docker Hub and ``_catalog``.
- ``manifestlists``: local manifest lists, kept as the Docker CLI keeps them;
  ``listpush``: one sent to its registry as an index.
"""
