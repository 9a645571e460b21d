"""`python -m calico_lite.cli ...`: how the lab starts node agents."""
import sys

from calico_lite.cli.app import main

sys.exit(main())
