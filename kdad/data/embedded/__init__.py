"""The embedded synthetic benchmark: eight generated categories in MVTec layout, the offline default.

``benchmark`` generates, caches, fingerprints and verifies the category folders; ``category`` is the contract a
category implements (and the defect placement that cannot fail); ``textures`` and ``objects`` are the categories;
``render`` the drawing and sensor primitives; ``datamodule`` reads the generated folders as MVTec.
See docs/synthetic.md.
"""

from kdad.data.embedded.benchmark import (
    SYNTHETIC_CATEGORIES,
    SYNTHETIC_DEFECTS,
    BenchmarkParams,
    ensure_synthetic_benchmark,
    render_synthetic_image,
)

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_DEFECTS",
    "BenchmarkParams",
    "ensure_synthetic_benchmark",
    "render_synthetic_image",
]
