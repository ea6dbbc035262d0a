"""``python -m wml_framework …`` is ``wml …`` (what ``torchrun -m wml_framework run …`` starts on every rank)."""

from .cli import main

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="wml")
