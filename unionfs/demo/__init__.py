"""A small embedded example: two layer directories shipped with the package."""
