"""Built-in pruners, one per module, registered through the `harness.pruners` entry points."""
