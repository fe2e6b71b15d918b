import sys

from specpl.cli import main

sys.exit(main())
