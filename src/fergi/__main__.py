import sys

from fergi.cli import main

sys.exit(main())
