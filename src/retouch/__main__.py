"""`python -m retouch`: the `retouch` command."""

from retouch.main import main

main()
