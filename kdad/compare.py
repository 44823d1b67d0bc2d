"""``python -m kdad.compare``: comparison tables from a spec of conf/compare/ (kdad.runner.compare)."""

from kdad.runner.compare import main

if __name__ == "__main__":
    main()
