"""`python -m runwarden` runs the command line."""

from runwarden.cli import main

main()
