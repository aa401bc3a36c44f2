"""`python -m shinchoku_client`: the same as `shinchoku-client`."""

from shinchoku_client.cli import main

main()
