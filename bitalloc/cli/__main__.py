import sys

from bitalloc.cli.app import main

sys.exit(main())
