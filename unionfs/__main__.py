import sys

from unionfs.cli import main

sys.exit(main())
