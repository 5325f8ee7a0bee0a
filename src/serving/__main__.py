"""``python -m src.serving``: the service in the foreground (see ``src.serving.service``)."""

from src.serving.service import main

main()
