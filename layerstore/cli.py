"""Command line of the layer store: a placeholder until the store lands."""
import sys


def main(argv: list[str] | None = None) -> int:
    print("layerstore: not built yet; only the unionfs driver is available", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
