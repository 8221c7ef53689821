"""The registry's domain: digests, names, blobs, uploads, manifests, tags, referrers.

Knows nothing of HTTP; talks to bytes through `moorage.storage` and to facts through
`moorage.metadata`.
"""
