"""A union filesystem with overlayfs semantics, over FUSE.

The core (``layer``, ``resolve``, ``copyup``, ``union``) is plain Python and
does not import fusepy; ``fuseops`` and ``mount.serve`` do.
"""
__version__ = "0.1.0"
