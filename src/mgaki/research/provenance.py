"""Run provenance: the versions of mgaki, its knowledge and the libraries a result was computed with."""

from __future__ import annotations

from mgaki.knowledge import load

__all__ = ["versions"]


def versions() -> dict[str, str]:
    """Versions of mgaki, its knowledge and the statistical libraries: the report's reproducibility line."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"mgaki": version("mgaki"), "knowledge": load().version}
    for pkg in ("statsmodels", "scikit-learn", "tableone", "pandas", "numpy", "scipy", "duckdb",
                "pyarrow", "altair", "vl-convert-python"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
