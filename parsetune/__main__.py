import sys

from parsetune.cli import main

sys.exit(main())
