"""The experiment runner, above the libraries: one run (train), sweeps (sweep, gpus), results files and tables
(results, report, compare), review material (review, notebook), and the command-line front (cli, loggers).
The command lines themselves are the thin modules ``kdad.run``, ``kdad.report`` and ``kdad.compare``."""
