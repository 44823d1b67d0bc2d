"""``python -m kdad.report``: tables from run folders (kdad.runner.report)."""

from kdad.runner.report import main

if __name__ == "__main__":
    main()
