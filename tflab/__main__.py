"""`python -m tflab` is the `tflab` command (the console script `tflab` calls run() too)."""


def run() -> None:
    """Catch signals before anything else is imported, then run the CLI."""
    from tflab import signals

    signals.install()
    from tflab.cli import main

    main()


if __name__ == "__main__":
    run()
