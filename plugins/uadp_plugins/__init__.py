"""The bundled uadp plugins; each registers through the `uadp` entry-point group like any third-party plugin."""
