"""A union filesystem with overlayfs semantics, over FUSE.

The core (``layer``, ``resolve``, ``copyup``, ``union``) is plain Python and
knows nothing of FUSE. ``session`` and ``handlers`` serve it to the kernel
over ``/dev/fuse``; ``fuseops`` serves it through fusepy (``engine=fusepy``).
"""
__version__ = "0.1.0"
