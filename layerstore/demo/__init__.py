"""A small embedded example image (made by umoci and skopeo, see make-example.sh)."""
