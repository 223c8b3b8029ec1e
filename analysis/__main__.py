"""`python3 -m analysis ...` from the repository root: the same as `python3 -m moesim_analysis ...`."""
import sys

from moesim_analysis.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
