import sys

from imle.cli import main

sys.exit(main())
