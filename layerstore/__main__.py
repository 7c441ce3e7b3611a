import sys

from layerstore.cli import main

sys.exit(main())
