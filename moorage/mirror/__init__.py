"""The pull-through cache: upstream registries mirrored under prefixes (docs/mirror.md).

`client` speaks to an upstream (Basic or token authentication); `cache` decides what to fetch
and stores it through the content layer; moorage/api/mirror.py hooks both into the v2 routes.
"""
