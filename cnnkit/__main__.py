"""`python -m cnnkit` runs the same CLI as the `cnnkit` console script."""

from cnnkit.cli.app import main

if __name__ == "__main__":
    main()
