"""`python -m harness` (and `torchrun ... -m harness run ...`): the `harness` command."""

from harness.cli import main

main()
