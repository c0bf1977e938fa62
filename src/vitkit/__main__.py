"""`python -m vitkit` runs the command-line interface."""

from vitkit.cli import console

if __name__ == "__main__":
    console()
