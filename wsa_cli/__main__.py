"""``python -m wsa_cli`` runs the same CLI as the ``wsa`` console script."""

from wsa_cli.cli.app import main

if __name__ == "__main__":
    main()
