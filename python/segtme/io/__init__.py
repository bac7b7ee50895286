"""Image and slide input: sources chosen by file content (``source.open_source``), MPP from the
file's metadata (``mpp``), lazy region reading from pyramids (``tiff``, ``openslide_source``),
tissue detection and region selection (``tissue``, ``regions``).

Nothing here imports the package root; ``segtme.inference`` may import ``segtme.io.image``."""
