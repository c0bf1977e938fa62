"""`python -m vitkit` runs the command-line interface."""

from vitkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
