"""Writers at the edge of the product: atomic files, QuPath GeoJSON, overlay PNG, CSV.

Only ``atomic`` is imported eagerly (it has no heavy dependencies); import the others as
``segtme.export.geojson`` etc.
"""

from .atomic import atomic_write, atomic_write_bytes, atomic_write_text

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]
