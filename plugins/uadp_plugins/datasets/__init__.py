"""Bundled dataset plugins: MVTec AD reader and the embedded demo dataset."""
