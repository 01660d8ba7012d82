import sys

from sync.demo.cli import main

sys.exit(main())
